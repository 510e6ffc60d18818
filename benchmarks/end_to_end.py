"""Section 3: a batch through the whole system (HTTP upload → MP3 stored → email sent) with
two converters, against the same batch converted by ``xargs -P2 ffmpeg`` on the same
machine; and the latency of one short clip from upload to email, stage by stage.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import media
from benchmarks.conversion import ffmpeg_command
from benchmarks.measure import CpuMeter, Progress, median, run_child
from benchmarks.report import Section, Target, seconds
from benchmarks.system import Client, System, SystemUnavailable, work_dir

BATCH_TARGET = 1.0
CONVERTERS = 2
LATENCY_POLL = 0.025  # seconds between looks at the job state and the mail directory
STAGES = ("upload", "queued", "converting", "notifying")


@dataclass(frozen=True)
class Plan:
    count: int
    video: media.VideoSpec
    clip: media.VideoSpec


FULL = Plan(
    20,
    media.VideoSpec("2-min 720p H.264/AAC MP4", 120, 1280, 720, fps=25),
    media.VideoSpec("10-s 720p H.264/AAC MP4", 10, 1280, 720, fps=25),
)
QUICK = Plan(
    3,
    media.VideoSpec("4-s 320x240 H.264/AAC MP4", 4, 320, 240, fps=15),
    media.VideoSpec("2-s 320x240 H.264/AAC MP4", 2, 320, 240, fps=15),
)


@dataclass
class Results:
    ffmpeg_batch: list[float] = field(default_factory=list)
    ffmpeg_batch_cpu: list[float] = field(default_factory=list)
    system_batch: list[float] = field(default_factory=list)
    system_batch_cpu: list[dict[str, float]] = field(default_factory=list)  # process → CPU seconds
    stages: dict[str, list[float]] = field(default_factory=dict)
    totals: list[float] = field(default_factory=list)
    ffmpeg_clip: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def xargs_command(list_file: Path, out_dir: Path) -> list[str]:
    """``xargs -P2`` running the section 1 ffmpeg command once per file, two at a time."""
    script = (
        f'exec {media.debian_ffmpeg()} -nostdin -y -i "$1" -vn -c:a libmp3lame -b:a 192k '
        '"$0/$(basename "$1").mp3" 2>/dev/null'
    )
    return ["xargs", "-0", "-a", str(list_file), "-n1", f"-P{CONVERTERS}", "sh", "-c", script, str(out_dir)]


def ffmpeg_batch(files: list[Path], work: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (xargs and every ffmpeg it ran)."""
    out_dir = Path(tempfile.mkdtemp(prefix="xargs-", dir=work))
    list_file = out_dir / "files.list"
    list_file.write_bytes(b"".join(bytes(f) + b"\0" for f in files))
    try:
        run = run_child(xargs_command(list_file, out_dir))
        if run.returncode != 0:
            raise RuntimeError(f"xargs ffmpeg failed ({run.returncode}): {run.stderr[-2000:]}")
        made = len(list(out_dir.glob("*.mp3")))
        if made != len(files):
            raise RuntimeError(f"xargs ffmpeg made {made} MP3s of {len(files)}")
        return run.wall_seconds, run.user_seconds + run.system_seconds
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def system_batch(system: System, client: Client, files: list[Path]) -> tuple[float, dict[str, float]]:
    """First upload starts → last of the batch's emails is in the sink's mail directory; and
    the CPU seconds each process used meanwhile."""
    emails_before = system.emails()
    meter = CpuMeter(system.all_pids()).start()
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = list(pool.map(lambda path: client.upload(path), files))
    target = emails_before + len(files)
    deadline = time.monotonic() + 1800
    while system.emails() < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{system.emails() - emails_before} of {len(files)} emails after 30 min")
        time.sleep(0.1)
    took = time.perf_counter() - began
    cpu = meter.stop()
    failed = [j for j in (client.job(str(b["job_id"])) for b in jobs) if client.state(j) != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) of the batch did not succeed: {failed[:2]}")
    return took, cpu


def clip_latency(system: System, client: Client, clip: Path) -> dict[str, float]:
    """Stage times of one clip: upload (until 202), queued, converting, notifying (until the .eml)."""
    emails_before = system.emails()
    began = time.perf_counter()
    body = client.upload(clip)
    marks = {"accepted": time.perf_counter()}
    job_id = str(body["job_id"])
    deadline = time.monotonic() + 600
    while "emailed" not in marks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"clip not done after 10 min: {marks}")
        now = time.perf_counter()
        if "succeeded" not in marks:
            state = client.state(client.job(job_id))
            if state == "converting":
                marks.setdefault("converting", now)
            elif state == "succeeded":
                marks["succeeded"] = now
            elif state == "failed":
                raise RuntimeError(f"clip conversion failed: {client.job(job_id)}")
        if system.emails() > emails_before:
            marks["emailed"] = now
            marks.setdefault("succeeded", now)
        time.sleep(LATENCY_POLL)
    # A conversion shorter than one look at the job shows no "converting": its queue wait and
    # its conversion are then one stage, reported as conversion.
    converting = marks.get("converting", marks["accepted"])
    return {
        "upload": marks["accepted"] - began,
        "queued": converting - marks["accepted"],
        "converting": marks["succeeded"] - converting,
        "notifying": marks["emailed"] - marks["succeeded"],
        "total": marks["emailed"] - began,
    }


def prepare(quick: bool, cache: Path, progress: Progress) -> list[Path]:
    """Generate (or find cached) this section's inputs: the batch, then the clip."""
    plan = QUICK if quick else FULL
    with progress.step(f"end-to-end · {plan.count} x {plan.video.label} (generated once, then cached)"):
        files = media.make_batch(plan.video, plan.count, cache)
        clip = media.make_video(plan.clip, cache)
    return [*files, clip]


def measure(system: System, plan: Plan, runs: int, cache: Path, work: Path, progress: Progress) -> Results:
    results = Results()
    *files, clip = prepare(plan is QUICK, cache, progress)
    for path in (*files, clip):
        media.warm(path)
    client = system.client()
    client.register_and_login(f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(16))
    for index in range(runs):
        order = ("ffmpeg", "system") if index % 2 == 0 else ("system", "ffmpeg")
        for who in order:
            with progress.step(f"end-to-end · batch of {plan.count} · {who} · run {index + 1}/{runs}"):
                if who == "ffmpeg":
                    took, cpu_seconds = ffmpeg_batch(files, work)
                    results.ffmpeg_batch.append(took)
                    results.ffmpeg_batch_cpu.append(cpu_seconds)
                else:
                    took, cpu = system_batch(system, client, files)
                    results.system_batch.append(took)
                    results.system_batch_cpu.append(cpu)
    for index in range(runs):
        with progress.step(f"end-to-end · latency of {plan.clip.label} · run {index + 1}/{runs}"):
            stages = clip_latency(system, client, clip)
        for name, value in stages.items():
            results.stages.setdefault(name, []).append(value)
        out = work / "clip.mp3"
        run = run_child(ffmpeg_command(clip, out))
        if run.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on the clip: {run.stderr[-2000:]}")
        results.ffmpeg_clip.append(run.wall_seconds)
    return results


def cpu_note(results: Results, plan: Plan) -> str:
    """Where the batch's CPU went (the run with the median time), against ffmpeg's."""
    ordered = sorted(range(len(results.system_batch)), key=lambda i: results.system_batch[i])
    cpu = results.system_batch_cpu[ordered[len(ordered) // 2]]
    groups: dict[str, float] = {}
    for name, seconds_used in cpu.items():
        key = "converters" if name.startswith("converter") else name
        groups[key] = groups.get(key, 0.0) + seconds_used
    total = sum(groups.values())
    parts = ", ".join(
        f"{name} {value:.0f} s" for name, value in sorted(groups.items(), key=lambda kv: -kv[1])
    )
    return (
        f"CPU used during the batch (median run): {total:.0f} CPU-seconds in all ({parts}); the "
        f"xargs ffmpeg batch used {median(results.ffmpeg_batch_cpu):.0f}. The system also moves every "
        f"video twice through the MongoDB-compatible server (HTTP upload into GridFS, then the "
        f"converter's download from it): {plan.count} files of "
        f"{plan.video.label}."
    )


def run(runs: int, quick: bool, cache: Path, progress: Progress) -> Section:
    plan = QUICK if quick else FULL
    section = Section(
        key="end_to_end",
        title="End-to-end throughput",
        baseline=f"the same {plan.count} files converted by `xargs -0 -n1 -P{CONVERTERS} sh -c "
        "'ffmpeg -nostdin -y -i \"$1\" -vn -c:a libmp3lame -b:a 192k OUT.mp3'` (Debian's ffmpeg); "
        "for the clip's latency, the same ffmpeg command converting the clip.",
        columns=["measure", "system", "baseline", "ratio (system/baseline)"],
    )
    try:
        with work_dir(cache, "e2e-") as work, System.started(work, converters=CONVERTERS) as system:
            results = measure(system, plan, runs, cache, work, progress)
    except SystemUnavailable as error:
        section.not_run = str(error)
        return section
    ours, base = median(results.system_batch), median(results.ffmpeg_batch)
    ratio = ours / base
    media_total = plan.count * plan.video.seconds
    section.rows.append(
        [
            f"batch of {plan.count} x {plan.video.label}, {CONVERTERS} converters",
            seconds(ours),
            seconds(base),
            f"{ratio:.2f}x",
        ]
    )
    clip_total, clip_base = median(results.stages["total"]), median(results.ffmpeg_clip)
    for stage in STAGES:
        section.rows.append([f"clip latency: {stage}", seconds(median(results.stages[stage])), "", ""])
    section.rows.append(
        [
            f"clip latency: upload → email ({plan.clip.label})",
            seconds(clip_total),
            seconds(clip_base),
            f"{clip_total / clip_base:.2f}x",
        ]
    )
    section.targets.append(
        Target(
            f"batch time ≤ {BATCH_TARGET}x the xargs -P{CONVERTERS} ffmpeg batch",
            f"{ratio:.2f}x",
            ratio <= BATCH_TARGET,
        )
    )
    section.notes.append(cpu_note(results, plan))
    section.notes += [
        f"Batch: {media_total / ours:.0f} media seconds per wall second through the system, "
        f"{media_total / base:.0f} with xargs ffmpeg. System time runs from the first upload's start "
        "to the last email in the sink (uploads two at a time).",
        "Every run (s), system / ffmpeg: "
        + ", ".join(
            f"{a:.1f}/{b:.1f}" for a, b in zip(results.system_batch, results.ffmpeg_batch, strict=True)
        ),
        f"Clip stages: upload = until the 202; queued = until the job is seen converting; converting = "
        f"until it is seen succeeded; notifying = until the email file appears. Looked at every "
        f"{LATENCY_POLL * 1000:.0f} ms (GET /jobs/<id> and the mail directory); medians of {runs}.",
    ]
    section.notes += results.notes
    return section
