"""Test-only entry point: ``python -m tests.notifier_paused`` runs the notifier, but right
after it sent an email (before the notified mark) it writes the job id to the file named by
``PAUSED_MARKER`` and stops there for good — so a test can kill it at exactly that point.
Nothing of this is in the notifier's own code or settings."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from common.service import run_service
from notifier import __main__ as entry
from notifier.worker import Notifier


def main() -> None:
    marker = Path(os.environ["PAUSED_MARKER"])
    original = Notifier.__init__

    def pause(job_id: str) -> None:
        marker.write_text(job_id)
        while True:
            time.sleep(3600)

    def init(self: Notifier, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.after_send = pause

    Notifier.__init__ = init  # type: ignore[method-assign]
    run_service("notifier", entry.main)


if __name__ == "__main__":
    main()
