"""The benchmark code paths on tiny inputs, so `make bench` cannot rot.

Nothing here times anything or asserts a figure: the benchmarks measure, the tests only
check that every path runs and produces a well-formed report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import __main__ as cli
from benchmarks import end_to_end, media, streaming
from benchmarks.measure import Progress, RssSampler, run_child

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="Debian's ffmpeg is not installed (make bench installs it)"
)
TINY = media.VideoSpec("1-s 160x120 test clip", 1, 160, 120, fps=10)


def test_run_child_reports_exit_code_and_peak_rss() -> None:
    run = run_child([sys.executable, "-c", "import sys; b = bytearray(20 * 2**20); sys.exit(3)"])
    assert run.returncode == 3
    assert run.peak_rss_bytes > 20 * 2**20  # the child's own peak, read with wait4
    assert run.wall_seconds > 0


def test_rss_sampler_follows_a_process_tree() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; b = bytearray(16 * 2**20); time.sleep(30)"],
        stdin=subprocess.DEVNULL,
    )
    try:
        sampler = RssSampler({"child": child.pid}, interval=0.05).start()
        deadline = time.monotonic() + 10
        while sampler.peaks().get("child", None) is None or sampler.peaks()["child"].bytes < 16 * 2**20:
            assert time.monotonic() < deadline, "sampler never saw the child's memory"
            time.sleep(0.05)
        sampler.reset()
        assert sampler.peaks()["child"].processes == 1
        sampler.stop()
    finally:
        child.kill()
        child.wait(10)


def test_generated_inputs_are_cached_and_valid(tmp_path: Path) -> None:
    clip = media.make_video(TINY, tmp_path)
    mtime = clip.stat().st_mtime_ns
    assert media.make_video(TINY, tmp_path).stat().st_mtime_ns == mtime  # reused, not remade
    assert abs(media.probe_duration(clip) - 1) < 0.2
    batch = media.make_batch(TINY, 2, tmp_path)
    assert len(batch) == 2 and batch[0] != batch[1]
    big = media.make_big_file(clip, 64 * 1024, tmp_path)
    assert big.stat().st_size >= 32 * 1024
    assert not list(tmp_path.glob(".*.part"))


def test_conversion_section_and_report(tmp_path: Path) -> None:
    assert cli.main(["--quick", "--prepare", "--only", "conversion", "--cache-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("v-*"))) == 3  # the inputs only, reused below
    output = tmp_path / "BENCHMARKS.md"
    argv = [
        "--quick",
        "--only",
        "conversion",
        "--runs",
        "1",
        "--cache-dir",
        str(tmp_path),
        "--output",
        str(output),
    ]
    assert cli.main(argv) == 0
    text = output.read_text()
    assert "## 1. Conversion" in text and "Quick run" in text
    for heading in ("CPU", "PyAV", "lameenc", "Debian ffmpeg", "RabbitMQ", "MariaDB"):
        assert f"| {heading}" in text
    assert text.count("| Conversion |") == 6  # time and memory target for each of the three inputs
    assert "WRONG LENGTH" not in text


def test_xargs_ffmpeg_baseline_converts_every_file(tmp_path: Path) -> None:
    files = media.make_batch(TINY, 3, tmp_path)
    wall, cpu = end_to_end.ffmpeg_batch(files, tmp_path)
    assert wall > 0 and cpu > 0


@pytest.mark.slow
@pytest.mark.system  # benchmarks.system starts the whole system without the tests' fixtures
def test_system_sections_run_on_tiny_inputs(tmp_path: Path) -> None:
    progress = Progress(heartbeat=3600)
    for run in (streaming.run, end_to_end.run):
        section = run(runs=1, quick=True, cache=tmp_path, progress=progress)
        assert not section.not_run, section.not_run
        assert section.rows and section.targets
    cpu_notes = [note for note in section.notes if note.startswith("CPU used during the batch")]
    assert cpu_notes and "converters" in cpu_notes[0] and "gateway" in cpu_notes[0]
