"""``python -m gateway``: run the gateway under gunicorn (never Flask's development server)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:gateway.gunicorn_conf",
        "gateway.app:create_app()",
    ]
    os.execv(sys.executable, args)  # noqa: S606 - fixed arguments, replaces this process


if __name__ == "__main__":
    main()
