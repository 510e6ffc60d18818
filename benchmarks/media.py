"""Benchmark inputs, generated with Debian's ffmpeg (lavfi test sources) and cached.

Nothing here is committed: files are made on first use under the cache directory
(``BENCH_CACHE_DIR``, default ~/.cache/video2mp3-bench) and named after every parameter
that shapes them, so a changed spec makes a new file and a finished file is reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path(
    os.environ.get("BENCH_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "video2mp3-bench"
)
FORMATS = {"mp4": "mp4", "mkv": "matroska"}


def debian_ffmpeg() -> str:
    """The ffmpeg command line we compare against: Debian's package, not anything bundled."""
    for candidate in ("/usr/bin/ffmpeg", shutil.which("ffmpeg")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("ffmpeg is not installed (make bench installs Debian's package)")


@dataclass(frozen=True)
class VideoSpec:
    """An H.264 + AAC stereo video of a test pattern and a sine tone."""

    label: str
    seconds: float
    width: int
    height: int
    fps: int = 25
    ext: str = "mp4"
    frequency: int = 440
    sample_rate: int = 44100

    @property
    def filename(self) -> str:
        return (
            f"v-{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s-"
            f"{self.frequency}hz-{self.sample_rate}.{self.ext}"
        )


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({result.returncode}): {' '.join(args)}\n{result.stderr[-2000:]}")


def _atomic(target: Path, make: object) -> Path:
    """Build ``target`` through a temporary name, so an interrupted run leaves nothing half made."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        make(part)  # type: ignore[operator]
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    return target


def make_video(spec: VideoSpec, cache: Path = DEFAULT_CACHE) -> Path:
    ffmpeg = debian_ffmpeg()

    def make(part: Path) -> None:
        _run(
            [
                ffmpeg, "-nostdin", "-y", "-loglevel", "error",
                "-f", "lavfi", "-i",
                f"testsrc2=size={spec.width}x{spec.height}:rate={spec.fps}:duration={spec.seconds:g}",
                "-f", "lavfi", "-i",
                f"sine=frequency={spec.frequency}:sample_rate={spec.sample_rate}:duration={spec.seconds:g}",
                "-map", "0:v", "-map", "1:a",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "128k", "-ac", "2",
                "-shortest", "-f", FORMATS[spec.ext], str(part),
            ]
        )  # fmt: skip

    return _atomic(cache / spec.filename, make)


def make_batch(spec: VideoSpec, count: int, cache: Path = DEFAULT_CACHE) -> list[Path]:
    """``count`` videos sharing one encoded picture track, each with its own tone (distinct files)."""
    ffmpeg = debian_ffmpeg()
    base = make_video(spec, cache)
    paths = []
    for index in range(count):
        frequency = 220 + 20 * index
        target = cache / f"batch-{index:02d}-{frequency}hz-{spec.filename}"

        def make(part: Path, frequency: int = frequency) -> None:
            _run(
                [
                    ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-i", str(base),
                    "-f", "lavfi", "-i",
                    f"sine=frequency={frequency}:sample_rate={spec.sample_rate}:duration={spec.seconds:g}",
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k", "-ac", "2",
                    "-shortest", "-f", FORMATS[spec.ext], str(part),
                ]
            )  # fmt: skip

        paths.append(_atomic(target, make))
    return paths


def make_big_file(source: Path, size: int, cache: Path = DEFAULT_CACHE) -> Path:
    """A valid video of about ``size`` bytes: ``source`` looped and stream-copied (no re-encode)."""
    ffmpeg = debian_ffmpeg()
    target = cache / f"big-{size}-{source.stem}.mp4"

    def make(part: Path) -> None:
        _run(
            [
                ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(source),
                "-map", "0", "-c", "copy", "-fs", str(size), "-f", "mp4", str(part),
            ]
        )  # fmt: skip

    return _atomic(target, make)


def probe_duration(path: Path) -> float:
    """Container duration by Debian's ffprobe (for sanity checks only, never timed)."""
    ffprobe = str(Path(debian_ffmpeg()).with_name("ffprobe"))
    result = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(result.stdout.strip() or "nan")


def warm(path: Path) -> None:
    """Read a file once so every measured run starts with it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(8 * 1024 * 1024):
            pass
