"""Every conversion option end to end: upload through the gateway (gunicorn), convert (a
real converter over RabbitMQ), download, and check the MP3 with ffprobe, mutagen and
ffmpeg's ebur128 filter — what a user would check. Probe-time errors fail the job with a
reason a person understands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mutagen.id3 import ID3
from mutagen.mp3 import BitrateMode

from testing.infra import Infra
from testing.media import COVER_SIZE, audio_duration, make_media
from tests.fixtures.system import HttpResult, System, running_system
from tests.test_converter_options import FRAME, RICH, ffprobe, loudness, mp3_info

pytestmark = pytest.mark.timeout(600)
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def options_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, str]]:
    def start(srv: System) -> None:
        srv.start_auth()
        srv.start_storage()
        srv.start_gateway()
        srv.start_converter()
        assert srv.register("options@example.com", PASSWORD).status == 201

    with running_system(infra, tmp_path_factory.mktemp("options"), start) as srv:
        yield srv, srv.login("options@example.com", PASSWORD)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("video") / "Holiday Clip.mp4", RICH)


def upload(
    srv: System, token: str, path: Path, before: dict[str, str], after: dict[str, str] | None = None
) -> HttpResult:
    """A multipart upload with option fields before and after the file part."""
    boundary = f"----v2m{time.monotonic_ns()}"

    def field(name: str, value: str) -> bytes:
        return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

    body = b"".join(field(k, v) for k, v in before.items())
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    body += path.read_bytes() + b"\r\n"
    body += b"".join(field(k, v) for k, v in (after or {}).items())
    body += f"--{boundary}--\r\n".encode()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    return srv.request("POST", "/upload", body, headers)


CASES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "defaults": ({}, {}),
    "cbr-mono-32k": ({"bitrate": "128"}, {"channels": "mono", "sample_rate": "32000"}),
    "vbr": ({"quality": "V3"}, {}),
    "trim": ({"start": "0:01.5"}, {"end": "5"}),
    "loud-normalized": ({"track": "0", "normalize": "true"}, {}),
    "quiet-normalized": ({}, {"track": "1", "normalize": "true"}),
    "tags-frame-cover": ({"title": "My Title", "artist": "Me"}, {"album": "Mine", "cover": "frame"}),
    "no-cover": ({"cover": "none", "channels": "stereo", "sample_rate": "48000"}, {}),
    "track-3": ({"track": "3"}, {}),
    "start-past-end": ({"start": "1:00"}, {}),
}


@pytest.fixture(scope="module")
def results(
    options_system: tuple[System, str], video: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], Path | None]]:
    """Every case uploaded at once, then each job waited for and its MP3 downloaded."""
    srv, token = options_system
    out = tmp_path_factory.mktemp("mp3s")
    jobs = {}
    for name, (before, after) in CASES.items():
        response = upload(srv, token, video, before, after)
        assert response.status == 202, response.body
        jobs[name] = response.json()["job_id"]
    done: dict[str, tuple[dict[str, Any], Path | None]] = {}
    for name, job_id in jobs.items():
        job = srv.wait_job_finished(token, job_id, timeout=240)
        mp3 = None
        if job["state"] == "succeeded":
            got = srv.request(
                "GET", f"/download?fid={job['mp3_id']}", headers={"Authorization": f"Bearer {token}"}
            )
            assert got.status == 200 and got.headers["Content-Type"] == "audio/mpeg"
            mp3 = out / f"{name}.mp3"
            mp3.write_bytes(got.body)
        done[name] = (job, mp3)
    return done


def succeeded(
    results: dict[str, tuple[dict[str, Any], Path | None]], name: str
) -> tuple[dict[str, Any], Path]:
    job, mp3 = results[name]
    assert job["state"] == "succeeded", job
    assert mp3 is not None
    return job, mp3


def audio_stream(mp3: Path) -> dict[str, Any]:
    return next(s for s in ffprobe(mp3)["streams"] if s["codec_type"] == "audio")


def pictures(mp3: Path) -> list[dict[str, Any]]:
    return [s for s in ffprobe(mp3)["streams"] if s["codec_type"] == "video"]


def test_defaults(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, mp3 = succeeded(results, "defaults")
    assert job["options"] == {}
    assert job["source"]["container"] == "mp4" and abs(job["source"]["duration_seconds"] - 6.0) < 0.1
    assert [
        (t["index"], t["codec"], t["channels"], t["language"]) for t in job["source"]["audio_tracks"]
    ] == [
        (0, "aac", 2, "eng"),
        (1, "aac", 2, "deu"),
    ]
    stream = audio_stream(mp3)
    assert (stream["bit_rate"], stream["channels"], stream["sample_rate"]) == ("192000", 2, "44100")
    info = mp3_info(mp3)
    assert info.bitrate_mode == BitrateMode.CBR and abs(info.length - 6.0) < FRAME
    assert abs(audio_duration(mp3) - 6.0) < FRAME
    tags = ID3(str(mp3))
    assert str(tags["TIT2"]) == "Holiday Clip"  # the file name without extension
    assert str(tags["TPE1"]) == "Source Artist" and str(tags["TALB"]) == "Source Album"
    assert str(tags["TDRC"]) == "2024" and str(tags["TCON"]) == "Jazz"
    chapters = [(float(c["start_time"]), c["tags"]["title"]) for c in ffprobe(mp3)["chapters"]]
    assert chapters == [(0.0, "Intro"), (2.0, "Middle"), (4.5, "End")]
    cover = pictures(mp3)
    assert len(cover) == 1 and cover[0]["disposition"]["attached_pic"] == 1
    assert (cover[0]["width"], cover[0]["height"]) == COVER_SIZE


def test_cbr_bitrate_mono_and_sample_rate(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, mp3 = succeeded(results, "cbr-mono-32k")
    assert job["options"] == {"bitrate": 128, "channels": "mono", "sample_rate": 32000}
    stream = audio_stream(mp3)
    assert (stream["bit_rate"], stream["channels"], stream["sample_rate"]) == ("128000", 1, "32000")
    assert mp3_info(mp3).bitrate_mode == BitrateMode.CBR


def test_vbr_quality(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, mp3 = succeeded(results, "vbr")
    assert job["options"] == {"quality": "V3"}
    info = mp3_info(mp3)
    assert info.bitrate_mode == BitrateMode.VBR
    assert abs(info.length - 6.0) < FRAME and abs(float(ffprobe(mp3)["format"]["duration"]) - 6.0) < 3 * FRAME


def test_trim(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, mp3 = succeeded(results, "trim")
    assert job["options"] == {"start": 1.5, "end": 5.0}
    assert abs(audio_duration(mp3) - 3.5) < FRAME
    assert abs(mp3_info(mp3).length - 3.5) < FRAME
    chapters = [(float(c["start_time"]), c["tags"]["title"]) for c in ffprobe(mp3)["chapters"]]
    assert chapters == [(0.0, "Intro"), (0.5, "Middle"), (3.0, "End")]


@pytest.mark.parametrize("case", ["loud-normalized", "quiet-normalized"])
def test_normalize(case: str, results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, mp3 = succeeded(results, case)
    assert job["options"]["normalize"] is True
    assert job["source"]["track"] == job["options"]["track"]
    integrated, peak = loudness(mp3)
    assert abs(integrated - (-16.0)) <= 1.0
    assert peak <= -1.0


def test_tags_and_frame_cover(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, mp3 = succeeded(results, "tags-frame-cover")
    assert job["options"] == {"title": "My Title", "artist": "Me", "album": "Mine", "cover": "frame"}
    tags = ID3(str(mp3))
    assert (str(tags["TIT2"]), str(tags["TPE1"]), str(tags["TALB"])) == ("My Title", "Me", "Mine")
    still = pictures(mp3)
    assert len(still) == 1 and still[0]["codec_name"] == "mjpeg"
    assert (still[0]["width"], still[0]["height"]) == (RICH.width, RICH.height)
    assert tags.getall("APIC")[0].mime == "image/jpeg"


def test_no_cover_stereo_48k(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    _, mp3 = succeeded(results, "no-cover")
    assert pictures(mp3) == []
    stream = audio_stream(mp3)
    assert (stream["channels"], stream["sample_rate"]) == (2, "48000")


def test_probe_time_errors_fail_the_job(results: dict[str, tuple[dict[str, Any], Path | None]]) -> None:
    job, _ = results["track-3"]
    assert job["state"] == "failed"
    assert job["failure_reason"] == (
        "there is no audio track 3: the video has 2 audio tracks: 0 (aac, eng), 1 (aac, deu)"
    )
    assert len(job["source"]["audio_tracks"]) == 2  # probed, and shown
    job, _ = results["start-past-end"]
    assert job["state"] == "failed" and "start 1 min 00 s is past the end" in job["failure_reason"]


@pytest.mark.parametrize(
    ("before", "after", "named"),
    [
        ({"bitrate": "100"}, {}, "bitrate"),
        ({}, {"quality": "V10"}, "quality"),
        ({}, {"colour": "red"}, "colour"),
    ],
)
def test_bad_values_are_400s_through_gunicorn(
    options_system: tuple[System, str], video: Path, before: dict[str, str], after: dict[str, str], named: str
) -> None:
    srv, token = options_system

    def stored_videos() -> int:
        client = srv.infra.mongo()
        try:
            return int(client[srv.mongo_db]["videos.files"].count_documents({}))
        finally:
            client.close()

    jobs_before = srv.request("GET", "/jobs", headers={"Authorization": f"Bearer {token}"}).json()["jobs"]
    # Not one video per job: a video goes once its MP3 is stored (unless KEEP_VIDEOS), maybe
    # meanwhile, so the refused upload must simply have added none.
    videos_before = stored_videos()
    response = upload(srv, token, video, before, after)
    assert response.status == 400 and named in response.json()["message"]
    jobs_after = srv.request("GET", "/jobs", headers={"Authorization": f"Bearer {token}"}).json()["jobs"]
    assert len(jobs_after) == len(jobs_before)
    assert stored_videos() <= videos_before
