"""Section 1: the converter's conversion function vs Debian's ffmpeg, on the same inputs.

Both run as fresh processes (``python -m benchmarks.adapter`` and ``ffmpeg …``), so the
wall time and the peak RSS (``wait4``) of each are those of the whole conversion,
interpreter start-up included. The order alternates run by run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import media
from benchmarks.measure import MIB, ChildRun, Progress, median, run_child
from benchmarks.report import Section, Target, mib, seconds

ROOT = Path(__file__).resolve().parent.parent
RATIO_TARGET = 0.85
MEMORY_TARGET = 64 * MIB

FULL_INPUTS = (
    media.VideoSpec("10-min 720p H.264/AAC MP4", 600, 1280, 720, fps=25),
    media.VideoSpec("3-min 1080p H.264/AAC MKV", 180, 1920, 1080, fps=25, ext="mkv"),
    media.VideoSpec("60-min 320x240 H.264/AAC MP4", 3600, 320, 240, fps=15),
)
QUICK_INPUTS = (
    media.VideoSpec("6-s 720p H.264/AAC MP4", 6, 1280, 720, fps=25),
    media.VideoSpec("3-s 1080p H.264/AAC MKV", 3, 1920, 1080, fps=25, ext="mkv"),
    media.VideoSpec("12-s 320x240 H.264/AAC MP4", 12, 320, 240, fps=15),
)


def ffmpeg_command(source: Path, target: Path) -> list[str]:
    return [
        media.debian_ffmpeg(),
        "-nostdin",
        "-y",
        "-i",
        str(source),
        "-vn",
        "-c:a",
        "libmp3lame",
        "-b:a",
        "192k",
        str(target),
    ]


def ours_command(source: Path, target: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.adapter", str(source), str(target)]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"}


@dataclass
class InputResult:
    spec: media.VideoSpec
    ffmpeg: list[ChildRun] = field(default_factory=list)
    ours: list[ChildRun] = field(default_factory=list)
    ours_reports: list[dict[str, float | str]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def _checked(run: ChildRun, what: str) -> ChildRun:
    if run.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {run.returncode}:\n{run.stderr[-3000:]}")
    return run


def prepare(quick: bool, cache: Path, progress: Progress) -> list[Path]:
    """Generate (or find cached) this section's inputs."""
    paths = []
    for spec in QUICK_INPUTS if quick else FULL_INPUTS:
        if not (cache / spec.filename).exists():
            with progress.step(f"conversion · generating {spec.label} (cached for later runs)"):
                media.make_video(spec, cache)
        paths.append(media.make_video(spec, cache))
    return paths


def measure_input(spec: media.VideoSpec, runs: int, cache: Path, progress: Progress) -> InputResult:
    source = media.make_video(spec, cache)
    media.warm(source)
    result = InputResult(spec)
    out_dir = Path(tempfile.mkdtemp(prefix="conv-", dir=cache))
    try:
        for index in range(runs):
            order = ("ffmpeg", "ours") if index % 2 == 0 else ("ours", "ffmpeg")
            for who in order:
                target = out_dir / f"{who}.mp3"
                with progress.step(f"conversion · {spec.label} · {who} · run {index + 1}/{runs}"):
                    if who == "ffmpeg":
                        run = _checked(run_child(ffmpeg_command(source, target)), "ffmpeg")
                        result.ffmpeg.append(run)
                    else:
                        run = _checked(run_child(ours_command(source, target), env=child_env()), "ours")
                        result.ours.append(run)
                        result.ours_reports.append(json.loads(run.stdout.strip().splitlines()[-1]))
                if index == 0:
                    result.checks.append(_check_output(who, target, spec.seconds))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _check_output(who: str, target: Path, expected: float) -> str:
    got = media.probe_duration(target)
    ok = abs(got - expected) <= max(0.25, expected * 0.002)
    size = target.stat().st_size
    verdict = "ok" if ok else "**WRONG LENGTH**"
    return f"{who}: {size / MIB:.1f} MiB MP3 of {got:.2f} s (input {expected:g} s): {verdict}"


def run(runs: int, quick: bool, cache: Path, progress: Progress) -> Section:
    section = Section(
        key="conversion",
        title="Conversion",
        baseline="`ffmpeg -nostdin -y -i IN -vn -c:a libmp3lame -b:a 192k OUT.mp3` (Debian's ffmpeg), "
        "each run a fresh process like ours (`python -m benchmarks.adapter IN OUT`, which calls "
        "`converter.transcode.Transcoder`: PyAV decode → lameenc encode, 192 kb/s CBR, with the "
        "converter's default of one LAME encoder per core, joined segment by segment).",
        columns=[
            "input",
            "ffmpeg time",
            "our time",
            "time ratio (ours/ffmpeg)",
            "CPU time ratio",
            "ffmpeg media s/s",
            "our media s/s",
            "ffmpeg peak RSS",
            "our peak RSS",
            "our in-process time",
        ],
    )
    prepare(quick, cache, progress)
    for spec in QUICK_INPUTS if quick else FULL_INPUTS:
        result = measure_input(spec, runs, cache, progress)
        ff_wall = median([r.wall_seconds for r in result.ffmpeg])
        our_wall = median([r.wall_seconds for r in result.ours])
        ff_rss = median([r.peak_rss_bytes for r in result.ffmpeg])
        our_rss = median([r.peak_rss_bytes for r in result.ours])
        our_max_rss = max(r.peak_rss_bytes for r in result.ours)
        in_process = median([float(r["convert_seconds"]) for r in result.ours_reports])
        ratio = our_wall / ff_wall
        cpu_ratio = median([r.user_seconds + r.system_seconds for r in result.ours]) / median(
            [r.user_seconds + r.system_seconds for r in result.ffmpeg]
        )
        section.rows.append(
            [
                spec.label,
                seconds(ff_wall),
                seconds(our_wall),
                f"{ratio:.2f}x",
                f"{cpu_ratio:.2f}x",
                f"{spec.seconds / ff_wall:.0f}",
                f"{spec.seconds / our_wall:.0f}",
                mib(ff_rss),
                mib(our_rss),
                seconds(in_process),
            ]
        )
        section.targets += [
            Target(f"time ≤ {RATIO_TARGET}x ffmpeg ({spec.label})", f"{ratio:.2f}x", ratio <= RATIO_TARGET),
            Target(
                f"peak memory < 64 MiB ({spec.label})",
                f"{mib(our_max_rss)} (max of runs)",
                our_max_rss < MEMORY_TARGET,
            ),
        ]
        encoders = sorted({str(r["encoder"]) for r in result.ours_reports})
        section.notes.append(
            f"{spec.label}: outputs checked with ffprobe — {'; '.join(result.checks)}; "
            f"our encoder: {', '.join(encoders)}."
        )
        pairs = zip(result.ffmpeg, result.ours, strict=True)
        walls = ", ".join(f"{a.wall_seconds:.2f}/{b.wall_seconds:.2f}" for a, b in pairs)
        section.notes.append(f"{spec.label}: every run, ffmpeg/ours wall seconds: {walls}.")
    section.notes.append(
        "Time is wall time of the whole process, from spawn to exit (our Python start-up and imports "
        "included); CPU time = user + system seconds of the process (less disturbed than wall time by "
        'other work on the machine); "in-process time" is ours from opening the file to the last MP3 '
        "byte. Media s/s = seconds of sound converted per wall-clock second. Peak RSS = the "
        "process's own maximum resident set (`wait4` ru_maxrss)."
    )
    return section
