"""The converter's spool folder: a converter killed mid-job leaves nothing behind for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from converter.spool import ROOT_NAME, Spool

# A converter stand-in: makes its spool, writes part of a video into it, then waits to be killed.
OWNER = textwrap.dedent(
    """
    import sys, time
    from converter.spool import Spool
    spool = Spool(sys.argv[1])
    path = spool.new_file(".video")
    path.write_bytes(b"v" * 1_000_000)
    print(spool.folder, flush=True)
    time.sleep(600)
    """
)


def start_owner(tmp_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_converters_spool_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead, dead_folder = start_owner(tmp_path)
    live, live_folder = start_owner(tmp_path)
    try:
        assert dead_folder.is_dir() and live_folder.is_dir()
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        assert any(dead_folder.iterdir()), "the killed owner's half-spooled video is still there"

        mine = Spool(tmp_path)
        assert mine.sweep() == 1
        assert not dead_folder.exists()
        assert not (dead_folder.parent / f"{dead_folder.name}.lock").exists()
        assert [p.stat().st_size for p in live_folder.iterdir()] == [1_000_000]  # alive: untouched
        assert mine.sweep() == 0
        mine.close()
    finally:
        live.kill()
        live.wait(10)

    # Once the other one is gone too, a new converter leaves only its own folder.
    mine = Spool(tmp_path)
    assert mine.sweep() == 1
    assert sorted(p.name for p in (tmp_path / ROOT_NAME).iterdir()) == sorted(
        [mine.owner, f"{mine.owner}.lock"]
    )
    mine.close()
    assert list((tmp_path / ROOT_NAME).iterdir()) == []


def test_leftovers_of_an_interrupted_start_or_sweep_are_removed(tmp_path: Path) -> None:
    root = tmp_path / ROOT_NAME
    root.mkdir()
    (root / ".123-abc.lock.new").touch()  # died between creating its lock and renaming it
    orphan = root / "456-def"  # its lock file was removed by a sweep that was cut off
    orphan.mkdir()
    (orphan / "x.video").write_bytes(b"x")
    mine = Spool(tmp_path)
    assert mine.sweep() == 2
    assert sorted(p.name for p in root.iterdir()) == sorted([mine.owner, f"{mine.owner}.lock"])
    mine.close()


def test_new_files_are_private_and_in_the_owners_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        path = spool.new_file(".video")
        assert path.parent == spool.folder
        assert path.stat().st_mode & 0o777 == 0o600
        assert spool.folder.stat().st_mode & 0o777 == 0o700
    finally:
        spool.close()
    assert not spool.folder.exists()
