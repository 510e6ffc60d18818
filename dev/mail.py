"""Reads the emails the local SMTP sink received (one .eml file each).

python dev/mail.py                      # list: time, recipient, subject
python dev/mail.py --show               # the newest message, text part
python dev/mail.py --link [--to ADDR]   # the download link of the newest success mail
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import re
import sys
import time
from email.message import EmailMessage
from pathlib import Path

LINK = re.compile(r"https?://\S+/download\?fid=[^\s\"'<>]+")


def load(folder: Path, to: str | None) -> list[tuple[float, EmailMessage]]:
    found = []
    for path in folder.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        if to and to.lower() not in str(msg.get("X-Sink-Rcpt-To", "")).lower():
            continue
        found.append((path.stat().st_mtime, msg))
    return sorted(found, key=lambda item: item[0])


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""


def main() -> int:
    infra_dir = os.environ.get("INFRA_DIR", "/var/tmp/video2mp3")  # noqa: S108 - as in dev/defaults.env
    default_dir = os.environ.get("SMTP_SINK_DIR") or f"{infra_dir}/mail"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default=default_dir, help="the sink's mail folder (SMTP_SINK_DIR)")
    parser.add_argument("--to", help="only messages to this address")
    parser.add_argument("--show", action="store_true", help="print the newest message")
    parser.add_argument("--link", action="store_true", help="print the newest download link")
    args = parser.parse_args()

    messages = load(Path(args.dir), args.to)
    if args.link:
        for _, msg in reversed(messages):
            match = LINK.search(text_of(msg))
            if match:
                print(match.group(0))
                return 0
        print("no email with a download link yet", file=sys.stderr)
        return 1
    if args.show:
        if not messages:
            print("no email yet", file=sys.stderr)
            return 1
        msg = messages[-1][1]
        print(f"To: {msg['To']}\nSubject: {msg['Subject']}\n\n{text_of(msg)}")
        return 0
    for mtime, msg in messages:
        print(f"{time.strftime('%H:%M:%S', time.localtime(mtime))}  {msg['To']}  {msg['Subject']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
