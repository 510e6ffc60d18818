"""Reliability under load and faults, with every service a real process.

Several users upload files concurrently while one fault is injected at a time: a
converter killed with SIGKILL, RabbitMQ restarted, the storage service stopped for a few
seconds, the SMTP sink stopped. After recovery nothing is lost or duplicated: every job
ends in the state it should, each user gets exactly one email per job, each job has
exactly one MP3, no job is stuck and the dead-letter queues are empty.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from converter.spool import ROOT_NAME
from testing.infra import Infra
from testing.media import MediaSpec, make_media, random_file
from testing.processes import wait_for
from tests.fixtures.system import RELIABILITY as LEDGER
from tests.fixtures.system import PrivateRabbit, System, running_system

pytestmark = pytest.mark.timeout(900)

USERS = 3
FILES_PER_USER = 8  # per fault round: 24 uploads while the fault happens
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def rabbit(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    node = PrivateRabbit(infra, tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield node
    finally:
        node.destroy()


@pytest.fixture(scope="module")
def system(infra: Infra, rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    work = tmp_path_factory.mktemp("reliability")
    faster_retries = {
        "RABBITMQ_URL": rabbit.url,
        # Quick retries so outages of a few seconds heal within the test's time.
        "CONVERTER_RETRY_BASE_SECONDS": "0.5",
        "CONVERTER_RETRY_MAX_SECONDS": "4",
        "CONVERTER_MAX_ATTEMPTS": "12",
        "NOTIFIER_RETRY_BASE_SECONDS": "0.5",
        "NOTIFIER_RETRY_MAX_SECONDS": "4",
        "NOTIFIER_MAX_ATTEMPTS": "12",
        "SWEEP_INTERVAL_SECONDS": "2",
        "REQUEUE_AFTER_SECONDS": "10",
        # The converters' spool, so the test can see what a killed one leaves behind.
        "TMP_DIR": str(work / "tmp"),
    }
    try:
        with running_system(infra, work, lambda srv: srv.start_all(converters=2), faster_retries) as srv:
            yield srv
    finally:
        print(LEDGER.summary())


@pytest.fixture(scope="module")
def users(system: System) -> dict[str, str]:
    tokens = {}
    for i in range(USERS):
        email = f"user{i}-{random.randrange(10**6)}@example.com"
        assert system.register(email, PASSWORD).status == 201
        tokens[email] = system.login(email, PASSWORD)
    return tokens


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("media")
    specs = [
        MediaSpec(container="mp4", duration=1.5),
        MediaSpec(container="mkv", duration=1.0, channels=1),
        MediaSpec(container="webm", duration=1.2),
        MediaSpec(container="avi", duration=0.8),
    ]
    return [make_media(folder / f"clip{i}.{s.container}", s) for i, s in enumerate(specs)]


def run_round(
    system: System,
    users: dict[str, str],
    media: list[Path],
    fault_name: str,
    fault: Callable[[], None],
    poison: Path | None = None,
) -> None:
    """Upload FILES_PER_USER files per user concurrently, inject the fault meanwhile, then
    check every invariant."""
    before_mail = {email: len(system.sink.mailbox.to(email)) for email in users}
    jobs: dict[str, tuple[str, str, bool]] = {}  # job id -> (email, token, expect success)
    lock = threading.Lock()

    def upload(email: str, token: str, index: int) -> None:
        path = poison if (poison is not None and index == 0) else media[index % len(media)]
        for _ in range(60):  # a 503 during an outage is the documented answer: try again
            result = system.upload(token, path, filename=f"{fault_name}-{index}{path.suffix}")
            if result.status == 202:
                with lock:
                    jobs[result.json()["job_id"]] = (email, token, path is not poison)
                return
            assert result.status == 503, (result.status, result.body)
            time.sleep(0.5)
        raise AssertionError("upload never accepted")

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [
            pool.submit(upload, email, token, i)
            for i in range(FILES_PER_USER)
            for email, token in users.items()
        ]
        time.sleep(0.5)
        fault()
        LEDGER.faults.append(fault_name)
        for future in futures:
            future.result()

    LEDGER.sent += len(jobs)
    finished = {
        job_id: system.wait_job_finished(token, job_id, timeout=240) for job_id, (_, token, _) in jobs.items()
    }
    for job_id, job in finished.items():
        expect_success = jobs[job_id][2]
        if expect_success:
            if job["state"] != "succeeded":
                LEDGER.lost += 1
            else:
                LEDGER.succeeded += 1
        else:
            assert job["state"] == "failed", job
            assert job.get("failure_reason") or job.get("reason")
            LEDGER.failed_as_expected += 1
    assert all(job["state"] == "succeeded" for jid, job in finished.items() if jobs[jid][2]), finished

    # Exactly one MP3 per succeeded job, none for failed ones.
    client = system.infra.mongo()
    try:
        files = client[system.mongo_db]["mp3s.files"]
        per_job = Counter(
            doc["metadata"].get("job_id") for doc in files.find({"metadata.job_id": {"$in": list(jobs)}})
        )
    finally:
        client.close()
    duplicated = sum(count - 1 for count in per_job.values() if count > 1)
    LEDGER.duplicated += duplicated
    assert duplicated == 0, per_job
    assert sorted(per_job) == sorted(j for j in jobs if jobs[j][2])

    # Exactly one email per job to its owner (the job's file name is in the subject).
    for email in users:
        expected = sum(1 for owner, _, _ in jobs.values() if owner == email)
        got = system.sink.mailbox.wait_for(email, before_mail[email] + expected, timeout=120)
        time.sleep(1.0)  # a duplicate would arrive right behind
        got = system.sink.mailbox.to(email)
        assert len(got) == before_mail[email] + expected, [m["Subject"] for m in got]


def assert_quiet(rabbit: PrivateRabbit, expect_dead: int = 0) -> None:
    depths = wait_for(
        lambda: (lambda d: d if d.get("video", 0) == 0 and d.get("mp3", 0) == 0 else None)(
            rabbit.queue_depths()
        ),
        timeout=60,
        what="work queues drained",
    )
    assert depths.get("video.dead", 0) + depths.get("mp3.dead", 0) == expect_dead, depths


def test_kill_a_converter_mid_load(
    system: System, users: dict[str, str], media: list[Path], rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    victims: list[int] = []

    def fault() -> None:
        victim = system.processes["converter-1"]
        victims.append(victim.proc.pid)  # type: ignore[union-attr]
        wait_for(lambda: system.infra is not None, timeout=1)
        victim.signal(signal.SIGKILL)
        victim.proc.wait(10)  # type: ignore[union-attr]
        system.start_converter(1)

    poison = random_file(tmp_path / "not-a-video.mp4")
    run_round(system, users, media, "kill-converter", fault, poison=poison)
    assert_quiet(rabbit)
    # The killed converter's spool (a half-spooled video, if it died mid-download) is gone:
    # what is left is the two live converters' folders, empty between jobs.
    spool = Path(system.env()["TMP_DIR"]) / ROOT_NAME
    entries = sorted(p.name for p in spool.iterdir())
    assert victims and not [name for name in entries if name.startswith(f"{victims[0]}-")], entries
    assert len([name for name in entries if name.endswith(".lock")]) == 2, entries
    assert len(entries) == 4, entries
    assert [p for p in spool.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_restart_rabbitmq_mid_load(
    system: System, users: dict[str, str], media: list[Path], rabbit: PrivateRabbit
) -> None:
    run_round(system, users, media, "restart-rabbitmq", lambda: rabbit.restart(down_seconds=2))
    assert_quiet(rabbit)


def test_stop_storage_for_a_few_seconds(
    system: System, users: dict[str, str], media: list[Path], rabbit: PrivateRabbit
) -> None:
    def fault() -> None:
        system.processes["storage"].stop()
        time.sleep(4)
        system.start_storage()

    run_round(system, users, media, "stop-storage", fault)
    assert_quiet(rabbit)


def test_stop_the_smtp_sink(
    system: System, users: dict[str, str], media: list[Path], rabbit: PrivateRabbit
) -> None:
    def fault() -> None:
        system.sink.stop()
        time.sleep(4)
        system.sink.start()

    run_round(system, users, media, "stop-smtp", fault)
    assert_quiet(rabbit)


def test_summary(system: System) -> None:
    print(LEDGER.summary())
    assert LEDGER.lost == 0
    assert LEDGER.duplicated == 0
    assert len(LEDGER.faults) == 4
