"""Section 2: memory stays flat while big files stream through the system.

Phases, each on the same running services with their peak RSS (VmHWM) reset in between:

  small  — a small video uploaded and a file as big downloaded through gateway → storage
  big    — the same with a 1 GiB video (``runs`` times, uploads interleaved with the baseline)
  clip   — the converter converts a short clip (fresh converter process)
  ref    — the converter converts a 2-minute video: from about a minute of sound on, its
           pipeline's buffers are at their full (fixed) size, so this is the reference
           for "flat"
  long   — the converter converts a 60-minute video

Upload throughput is a ratio to the baseline: a direct pymongo GridFS upload of the same
file to the same server (chunk size as storage's), in the same invocation.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gridfs

from benchmarks import media
from benchmarks.measure import MIB, Progress, RssSampler, median
from benchmarks.report import Section, Target, mib, seconds
from benchmarks.system import Client, System, SystemUnavailable, work_dir

GIB = 1024**3
MEMORY_TARGET = 100 * MIB
FLAT_GROWTH = 10 * MIB  # "flat": the big file's peak within this of the small file's
THROUGHPUT_TARGET = 0.7
STORAGE_CHUNK = 1024 * 1024  # storage's STORAGE_CHUNK_BYTES default, used for the baseline too
# The gateway's sweeper re-publishes jobs left queued; the streaming uploads are left queued
# on purpose (never converted), so it is off here.
NO_SWEEPER = {"SWEEP_INTERVAL_SECONDS": "0"}


@dataclass(frozen=True)
class Sizes:
    big: int
    small: int
    source: media.VideoSpec  # looped to make the big and small files
    long: media.VideoSpec  # the long conversion
    clip: media.VideoSpec
    ref: media.VideoSpec  # the converter's reference for "flat"


FULL = Sizes(
    big=GIB,
    small=32 * MIB,
    source=media.VideoSpec("10-min 720p H.264/AAC MP4", 600, 1280, 720, fps=25),
    long=media.VideoSpec("60-min 320x240 H.264/AAC MP4", 3600, 320, 240, fps=15),
    clip=media.VideoSpec("10-s 720p H.264/AAC MP4", 10, 1280, 720, fps=25),
    ref=media.VideoSpec("2-min 720p H.264/AAC MP4", 120, 1280, 720, fps=25),
)
QUICK = Sizes(
    big=8 * MIB,
    small=1 * MIB,
    source=media.VideoSpec("6-s 720p H.264/AAC MP4", 6, 1280, 720, fps=25),
    long=media.VideoSpec("12-s 320x240 H.264/AAC MP4", 12, 320, 240, fps=15),
    clip=media.VideoSpec("2-s 320x240 H.264/AAC MP4", 2, 320, 240, fps=15),
    ref=media.VideoSpec("4-s 320x240 H.264/AAC MP4", 4, 320, 240, fps=15),
)


@dataclass
class Results:
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)  # phase → service → bytes
    system_upload: list[float] = field(default_factory=list)
    direct_upload: list[float] = field(default_factory=list)
    big_download: list[float] = field(default_factory=list)
    big_size: int = 0
    notes: list[str] = field(default_factory=list)


def direct_gridfs_upload(system: System, path: Path) -> float:
    """The baseline: pymongo's GridFS upload of ``path`` into the same server; seconds taken."""
    client = system.infra.mongo()
    try:
        bucket = gridfs.GridFSBucket(
            client[system.infra.mongo_db], bucket_name="bench_direct", chunk_size_bytes=STORAGE_CHUNK
        )
        began = time.perf_counter()
        with path.open("rb") as handle:
            file_id = bucket.upload_from_stream(path.name, handle)
        took = time.perf_counter() - began
        bucket.delete(file_id)
        return took
    finally:
        client.close()


def _timed_upload(client: Client, path: Path) -> tuple[float, dict[str, object]]:
    began = time.perf_counter()
    body = client.upload(path)
    return time.perf_counter() - began, body


def seed_download(system: System, owner_id: str, path: Path) -> str:
    """Store ``path`` in the MP3 bucket for ``owner_id`` through storage's own gRPC API (as a
    converter stores an MP3), so GET /download can stream a file as big as the upload: the
    API downloads MP3s only, and no real MP3 comes near 1 GiB."""
    from video2mp3.storage.v1 import storage_pb2, storage_pb2_grpc

    from common.file_streams import UploadStream

    header = storage_pb2.UploadHeader(
        bucket=storage_pb2.BUCKET_MP3S,
        filename=f"{path.stem}.mp3",
        content_type="audio/mpeg",
        owner_id=owner_id,
    )

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(STORAGE_CHUNK):
                yield chunk

    with system.infra.channel(f"127.0.0.1:{system.ports['storage']}", "gateway") as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        response = stub.Upload(UploadStream(header, chunks()), timeout=3600)
    return str(response.file.id)


def _timed_download(client: Client, file_id: str, size: int) -> float:
    began = time.perf_counter()
    got = client.download(file_id)
    took = time.perf_counter() - began
    if got != size:
        raise RuntimeError(f"download returned {got} bytes of {size}")
    return took


def prepare(quick: bool, cache: Path, progress: Progress) -> list[Path]:
    """Generate (or find cached) this section's inputs: big, small, long, clip."""
    sizes = QUICK if quick else FULL
    with progress.step("streaming · inputs (generated once, then cached)"):
        source = media.make_video(sizes.source, cache)
        big = media.make_big_file(source, sizes.big, cache)
        small = media.make_big_file(source, sizes.small, cache)
        long = media.make_video(sizes.long, cache)
        clip = media.make_video(sizes.clip, cache)
        ref = media.make_video(sizes.ref, cache)
    return [big, small, long, clip, ref]


def measure(system: System, sizes: Sizes, runs: int, cache: Path, progress: Progress) -> Results:
    results = Results()
    big, small, long, clip, ref = prepare(sizes is QUICK, cache, progress)
    for path in (big, small, long, clip, ref):
        media.warm(path)
    big_size, small_size = big.stat().st_size, small.stat().st_size
    results.big_size = big_size
    client = system.client()
    client.register_and_login(f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(16))
    owner = str(client.me()["id"])
    with progress.step("streaming · storing the files to download (storage's gRPC API, not measured)"):
        small_id = seed_download(system, owner, small)
        big_id = seed_download(system, owner, big)
    sampler = RssSampler(system.pids("gateway", "storage")).start()
    try:
        # Phase small: the reference for "flat".
        sampler.reset()
        with progress.step(f"streaming · small file ({small_size / MIB:.0f} MiB) up and down"):
            _timed_upload(client, small)
            _timed_download(client, small_id, small_size)
        results.peaks["small"] = {k: v.bytes for k, v in sampler.peaks().items()}
        # Phase big: system and baseline uploads interleaved, alternating who goes first.
        sampler.reset()
        for index in range(runs):
            order = ("system", "direct") if index % 2 == 0 else ("direct", "system")
            for who in order:
                label = f"streaming · {big_size / MIB:.0f} MiB upload · {who} · run {index + 1}/{runs}"
                with progress.step(label):
                    if who == "direct":
                        results.direct_upload.append(direct_gridfs_upload(system, big))
                    else:
                        results.system_upload.append(_timed_upload(client, big)[0])
            with progress.step(f"streaming · {big_size / MIB:.0f} MiB download · run {index + 1}/{runs}"):
                results.big_download.append(_timed_download(client, big_id, big_size))
        results.peaks["big"] = {k: v.bytes for k, v in sampler.peaks().items()}
    finally:
        sampler.stop()
    # The uploads above were for streaming only: never converted.
    system.purge()
    converter = system.start_converters(1)[0]
    sampler = RssSampler({"converter": converter.pid}).start()
    try:
        for phase, path in (("clip", clip), ("ref", ref), ("long", long)):
            sampler.reset()
            with progress.step(f"streaming · converter converts the {phase} video ({path.name})"):
                body = client.upload(path)
                job = client.wait_finished(str(body["job_id"]), timeout=3600)
            if client.state(job) != "succeeded":
                raise RuntimeError(f"conversion of {path.name} failed: {job}")
            results.peaks[phase] = {k: v.bytes for k, v in sampler.peaks().items()}
    finally:
        sampler.stop()
    if not sampler.reset_supported:
        results.notes.append(
            "Peak RSS could not be reset between phases (/proc/<pid>/clear_refs refused): each "
            "phase's peak includes the earlier phases."
        )
    return results


def run(runs: int, quick: bool, cache: Path, progress: Progress) -> Section:
    sizes = QUICK if quick else FULL
    section = Section(
        key="streaming",
        title="Streaming memory",
        baseline="a direct pymongo GridFS upload (`GridFSBucket.upload_from_stream`, 1 MiB chunks as "
        "storage's) of the same file to the same server, for upload throughput; for memory, the same "
        'services with a small file ("flat" = the big file\'s peak within 10 MiB of the small '
        "file's; for the converter, of a 2-minute video's: from that length on its buffers are at "
        "their full size).",
        columns=[
            "service",
            f"peak RSS, {sizes.small / MIB:.0f} MiB up + down",
            f"peak RSS, {sizes.big / MIB:.0f} MiB up + down",
            "growth",
            f"converter peak RSS, {sizes.clip.label}",
            f"converter peak RSS, {sizes.ref.label}",
            f"converter peak RSS, {sizes.long.label}",
        ],
    )
    try:
        with (
            work_dir(cache, "streaming-") as work,
            System.started(work, with_converters=False, gateway_env=NO_SWEEPER) as system,
        ):
            results = measure(system, sizes, runs, cache, progress)
    except SystemUnavailable as error:
        section.not_run = str(error)
        return section
    for service in ("gateway", "storage"):
        small, big = results.peaks["small"].get(service, 0), results.peaks["big"].get(service, 0)
        section.rows.append([service, mib(small), mib(big), mib(big - small), "", "", ""])
        section.targets += [
            Target(
                f"{service} peak RSS < 100 MiB ({sizes.big / MIB:.0f} MiB file)",
                mib(big),
                big < MEMORY_TARGET,
            ),
            Target(f"{service} flat (growth < 10 MiB)", mib(big - small), big - small < FLAT_GROWTH),
        ]
    clip_peak, ref_peak, long_peak = (results.peaks[p].get("converter", 0) for p in ("clip", "ref", "long"))
    section.rows.append(
        ["converter", "", "", mib(long_peak - ref_peak), mib(clip_peak), mib(ref_peak), mib(long_peak)]
    )
    section.targets += [
        Target(
            f"converter peak RSS < 100 MiB ({sizes.long.label})", mib(long_peak), long_peak < MEMORY_TARGET
        ),
        Target(
            f"converter flat (growth < 10 MiB, {sizes.ref.label} → {sizes.long.label})",
            mib(long_peak - ref_peak),
            long_peak - ref_peak < FLAT_GROWTH,
        ),
    ]
    size = results.big_size
    ours, direct = median(results.system_upload), median(results.direct_upload)
    ratio = direct / ours
    section.targets.append(
        Target(
            f"upload throughput ≥ {THROUGHPUT_TARGET} of direct GridFS",
            f"{ratio:.2f}",
            ratio >= THROUGHPUT_TARGET,
        )
    )
    section.notes += [
        f"Upload of {size / MIB:.0f} MiB: through the gateway {seconds(ours)} "
        f"({size / MIB / ours:.0f} MiB/s), direct GridFS {seconds(direct)} "
        f"({size / MIB / direct:.0f} MiB/s): ratio {ratio:.2f} (median of {runs}).",
        "Every run (s), gateway / direct: "
        + ", ".join(
            f"{a:.1f}/{b:.1f}" for a, b in zip(results.system_upload, results.direct_upload, strict=True)
        ),
    ]
    if results.big_download:
        took = median(results.big_download)
        section.notes.append(
            f"Download of {size / MIB:.0f} MiB through the gateway: {seconds(took)} "
            f"({size / MIB / took:.0f} MiB/s). GET /download serves MP3s only, so the files downloaded "
            "(small and big) were stored beforehand in the MP3 bucket through storage's gRPC Upload, "
            "outside the measured phases."
        )
    section.notes += results.notes
    section.notes.append(
        "The converter's peak still grows with an MP4's duration: FFmpeg's MP4 demuxer keeps an "
        "index entry for every packet of every track (the 60-minute file has about 210,000), "
        "built when the file is opened; section 1's standalone conversions show it too (the "
        "60-minute file's peak over the 10-minute file's, both with the pipeline's buffers at "
        "full size)."
    )
    section.notes.append(
        "Peak RSS = the highest VmHWM of one process of the service (gunicorn: master or a worker), "
        "polled every 0.2 s and reset between phases through /proc/<pid>/clear_refs."
    )
    return section
