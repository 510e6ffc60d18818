"""Keeps one service of `make up` running, as Kubernetes would: restarts it when it exits.

    python dev/keep_running.py NAME -- COMMAND [ARG ...]

honcho (the Procfile runner) stops every process as soon as one exits; with each Procfile
line wrapped in this, a crashed service is started again after a back-off (1 s, doubling up
to 30 s, back to 1 s once it has run for a minute) and the others carry on. SIGTERM or
SIGINT (`make down`) is passed to the service; this process then waits for it and exits.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0


def say(name: str, text: str) -> None:
    print(f"[keep_running] {name}: {text}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command is required after --")

    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    delay = FIRST_DELAY
    while not stopping.is_set():
        started = time.monotonic()
        # Same process group: honcho's killpg (and make down's SIGKILL) reach the service too.
        child = subprocess.Popen(command)
        if stopping.is_set():  # a signal that came while it was being started
            child.terminate()
        say(args.name, f"started (pid {child.pid})")
        code = child.wait()
        if stopping.is_set():
            return 0
        if time.monotonic() - started >= HEALTHY_AFTER:
            delay = FIRST_DELAY
        say(args.name, f"exited with code {code}; restarting in {delay:.0f} s")
        if stopping.wait(delay):
            return 0
        delay = min(delay * 2, MAX_DELAY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
