"""The converter's spool: the folder where videos wait on disk while they are converted.

Layout under ``<TMP_DIR>/video2mp3-spool/``: each converter process owns one folder
``<owner>/`` and holds an exclusive ``flock`` on ``<owner>.lock`` for as long as it lives.
The kernel drops the lock when the process dies, however it dies (SIGKILL, OOM kill), so
any converter can tell a live owner's folder from a dead one's by trying to take its lock.

:meth:`Spool.sweep` (run at start and after every job) removes the folders of owners
that are gone, with whatever they left (a video half-spooled when the process was
killed). A lock file is created under a temporary name, locked, and only then renamed to
``<owner>.lock`` before its folder is made, so a sweep never sees a live owner's lock
unlocked, and a folder without its lock file is always a leftover.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger("converter.spool")

ROOT_NAME = "video2mp3-spool"
LOCK_SUFFIX = ".lock"
STAGING_SUFFIX = ".lock.new"


class Spool:
    """One converter process's spool folder, created and locked on construction."""

    def __init__(self, tmp_dir: str | Path) -> None:
        self.root = Path(tmp_dir) / ROOT_NAME
        self.root.mkdir(parents=True, exist_ok=True)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        staging = self.root / f".{self.owner}{STAGING_SUFFIX}"
        self._lock_fd = os.open(staging, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staging, self.root / f"{self.owner}{LOCK_SUFFIX}")
        self.folder = self.root / self.owner
        self.folder.mkdir(mode=0o700)

    def new_file(self, suffix: str = ".video") -> Path:
        """A new empty file (mode 0600) in this process's folder; the caller removes it."""
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.folder)
        os.close(fd)
        return Path(name)

    def sweep(self) -> int:
        """Remove the folders (and lock files) of owners that are no longer alive.
        Returns how many were removed. Never touches a live converter's folder."""
        removed = 0
        for entry in self.root.iterdir():
            name = entry.name
            if name == self.owner or name == f"{self.owner}{LOCK_SUFFIX}":
                continue
            if name.startswith(".") and name.endswith(STAGING_SUFFIX):
                # A lock file not yet renamed: its owner died while starting, or is starting.
                if self._remove_if_dead(entry, None):
                    removed += 1
            elif name.endswith(LOCK_SUFFIX):
                if self._remove_if_dead(entry, self.root / name.removesuffix(LOCK_SUFFIX)):
                    removed += 1
            elif entry.is_dir() and not (self.root / f"{name}{LOCK_SUFFIX}").exists():
                # A folder whose lock file is gone: left by a sweep that was itself cut off.
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        if removed:
            log.info("removed the spool of converters that are gone", extra={"removed": removed})
        return removed

    def _remove_if_dead(self, lock: Path, folder: Path | None) -> bool:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # another sweep got there first
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its owner is alive
            if folder is not None:
                size = _folder_size(folder)
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed a dead converter's spool", extra={"owner": folder.name, "bytes": size})
            lock.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        """Remove this process's folder and lock (on a graceful stop)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{self.owner}{LOCK_SUFFIX}").unlink()
        os.close(self._lock_fd)


def _folder_size(folder: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for path in folder.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
    return total
