"""Measuring: wall time and peak RSS of a child process, peak RSS of running services,
progress on stderr, and the median."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

MIB = 1024 * 1024


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass(frozen=True)
class ChildRun:
    """One measured child process."""

    wall_seconds: float
    peak_rss_bytes: int  # ru_maxrss of this child alone (os.wait4), i.e. its VmHWM
    user_seconds: float
    system_seconds: float
    returncode: int
    stdout: str
    stderr: str


def run_child(
    args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 7200
) -> ChildRun:
    """Run ``args`` to completion; wall time from spawn to exit, peak RSS from ``wait4``.

    ``wait4`` returns the resource usage of exactly this child (not the running maximum of
    every child ever reaped, which ``getrusage(RUSAGE_CHILDREN)`` would give)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(args),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return ChildRun(
        wall_seconds=wall,
        peak_rss_bytes=int(usage.ru_maxrss) * 1024,  # Linux: KiB
        user_seconds=usage.ru_utime,
        system_seconds=usage.ru_stime,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
    )


# --------------------------------------------------------------------------- services


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn workers, multiprocessing children)."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as handle:
                    found.extend(int(child) for child in handle.read().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (0 for a gone process)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{member}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


class CpuMeter:
    """CPU seconds each named process (tree) used between ``start`` and ``stop``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._began: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._began = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self._began[name] for name, pid in self.pids.items()}


@dataclass
class PeakRss:
    """Highest VmHWM seen for one service: of a single process of its tree, and which."""

    bytes: int = 0
    processes: int = 0


@dataclass
class RssSampler:
    """Polls VmHWM (peak RSS) of the process trees of running services.

    VmHWM is kept by the kernel, so polling only has to see each process before it exits.
    ``reset()`` sets every watched process's high-water mark back to its current RSS
    (``/proc/<pid>/clear_refs`` = 5), so one set of services can be measured phase by phase.
    """

    roots: dict[str, int]
    interval: float = 0.2
    _peaks: dict[str, dict[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    reset_supported: bool = True

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            for name, root in self.roots.items():
                peaks = self._peaks.setdefault(name, {})
                for pid in process_tree(root):
                    hwm = _status_kib(pid, "VmHWM")
                    if hwm is not None:
                        peaks[pid] = max(peaks.get(pid, 0), hwm * 1024)

    def reset(self) -> None:
        with self._lock:
            for root in self.roots.values():
                for pid in process_tree(root):
                    try:
                        with open(f"/proc/{pid}/clear_refs", "w") as handle:
                            handle.write("5")
                    except OSError:
                        self.reset_supported = False
            self._peaks.clear()
        self.sample()

    def peaks(self) -> dict[str, PeakRss]:
        self.sample()
        with self._lock:
            return {name: PeakRss(max(p.values(), default=0), len(p)) for name, p in self._peaks.items()}


# --------------------------------------------------------------------------- progress


class Progress:
    """What the benchmark is doing, on stderr: section, step, run i/n, elapsed time."""

    def __init__(self, stream: TextIO | None = None, heartbeat: float = 30.0) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.start = time.monotonic()
        self.heartbeat = heartbeat
        self.tty = self.stream.isatty()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clock(self) -> str:
        total = int(time.monotonic() - self.start)
        return f"{total // 60:02d}:{total % 60:02d}"

    def note(self, message: str) -> None:
        self._write(f"[bench {self._clock()}] {message}\n")

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        """Shows ``message`` with a running timer; the time taken when it ends."""
        began = time.monotonic()
        done = threading.Event()

        def tick() -> None:
            last_beat = began
            while not done.wait(1.0):
                now = time.monotonic()
                if self.tty:
                    self._write(f"\r[bench {self._clock()}] {message} … {now - began:.0f} s")
                elif now - last_beat >= self.heartbeat:
                    last_beat = now
                    self._write(f"[bench {self._clock()}] {message} … still running ({now - began:.0f} s)\n")

        if not self.tty:
            self._write(f"[bench {self._clock()}] {message} …\n")
        ticker = threading.Thread(target=tick, name="progress", daemon=True)
        ticker.start()
        ok = False
        try:
            yield
            ok = True
        finally:
            done.set()
            ticker.join(2)
            took = time.monotonic() - began
            state = f"{took:.1f} s" if ok else f"FAILED after {took:.1f} s"
            prefix = "\r" if self.tty else ""
            self._write(
                f"{prefix}[bench {self._clock()}] {message} … {state}\033[K\n"
                if self.tty
                else f"[bench {self._clock()}] {message} … {state}\n"
            )
