"""A local SMTP sink: accepts every message and stores it as an .eml file.

Development and tests only. Each message is written to a temporary name and then
renamed, so a reader never sees half a message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.maildir.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        name = f"{uuid.uuid4().hex}.eml"
        tmp = self.maildir / f".{name}.tmp"
        content = envelope.original_content or b""
        rcpts = ",".join(envelope.rcpt_tos)
        tmp.write_bytes(f"X-Sink-Rcpt-To: {rcpts}\r\n".encode() + content)
        os.replace(tmp, self.maildir / name)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--maildir", required=True)
    parser.add_argument(
        "--smtputf8", action="store_true", help="offer SMTPUTF8 (RFC 6531) like a relay that has it"
    )
    args = parser.parse_args()

    controller = Controller(
        MaildirHandler(Path(args.maildir)),
        hostname=args.host,
        port=args.port,
        enable_SMTPUTF8=args.smtputf8,
    )
    controller.start()
    print(f"smtp sink on {args.host}:{args.port}, mail in {args.maildir}", flush=True)

    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: None if stop.done() else stop.set_result(None))
    loop.run_until_complete(stop)
    controller.stop()


if __name__ == "__main__":
    main()
