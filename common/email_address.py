"""The one rule for email addresses: what sign-up accepts is what the notifier can deliver.

Auth checks a new address with ``parse_address`` and the notifier builds every recipient
with it, so no account can be made whose email the mail path cannot send (issue 19).

* The local part is a dot-atom (RFC 5321 ``Dot-string``): no quoted strings, no comments,
  no leading, trailing or doubled dots, and never an RFC 2047 encoded word (``=?…?=``),
  which mail servers would take literally.
* A local part with non-ASCII characters (RFC 6531) needs a relay that offers SMTPUTF8:
  accepted only with ``allow_utf8_local`` (auth's ``MAIL_SMTPUTF8``). The notifier sends
  such a message with SMTPUTF8; a relay without it refuses it permanently.
* An internationalised domain is accepted and delivered as its ASCII form (IDNA A-labels),
  which every relay understands; the domain needs two or more letter-digit-hyphen labels.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_ADDRESS_CHARS = 254
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 253
# RFC 5322 atext, ASCII.
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_LDH_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class UndeliverableAddress(ValueError):
    """An address the mail path cannot deliver to; the message is safe to show to users."""


@dataclass(frozen=True)
class MailAddress:
    local: str
    domain: str  # as the user wrote it (NFC)
    ascii_domain: str  # IDNA A-labels: what goes on the wire

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii()

    @property
    def wire(self) -> str:
        """The address as sent in RCPT TO and To:."""
        return f"{self.local}@{self.ascii_domain}"


def _utf8_atom_char(char: str) -> bool:
    # RFC 6531 UTF8-non-ascii, restricted to letters, marks and digits (no symbols, spaces,
    # controls or invisible formatting characters).
    return not char.isascii() and unicodedata.category(char)[0] in "LMN"


def _check_local(local: str, allow_utf8_local: bool) -> None:
    if not local or len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_OCTETS:
        raise UndeliverableAddress("the part before the @ must be 1 to 64 bytes")
    if "=?" in local and "?=" in local:
        raise UndeliverableAddress("encoded words (=?…?=) are not allowed in an email address")
    if not local.isascii() and not allow_utf8_local:
        raise UndeliverableAddress("we can only send email to addresses with plain ASCII before the @")
    for atom in local.split("."):
        if not atom:
            raise UndeliverableAddress("dots in an email address may not lead, trail or repeat")
        for run in re.split(_ATEXT, atom):
            if run and not all(_utf8_atom_char(c) for c in run):
                raise UndeliverableAddress("the part before the @ contains characters email cannot carry")


def _ascii_domain(domain: str) -> str:
    if domain.startswith("[") or domain.endswith("."):
        raise UndeliverableAddress("the domain must be a plain host name")
    try:
        encoded = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise UndeliverableAddress("the domain is not a valid host name") from None
    labels = encoded.split(".")
    if (
        len(encoded) > MAX_DOMAIN_OCTETS
        or len(labels) < 2
        or not all(_LDH_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise UndeliverableAddress("the domain is not a valid host name")
    return encoded.lower()


def parse_address(raw: str, allow_utf8_local: bool = False) -> MailAddress:
    """``local@domain`` that the mail path can deliver, or UndeliverableAddress."""
    address = unicodedata.normalize("NFC", raw.strip())
    if not address or len(address) > MAX_ADDRESS_CHARS:
        raise UndeliverableAddress(f"an email address has 1 to {MAX_ADDRESS_CHARS} characters")
    if any(unicodedata.category(c)[0] in "CZ" for c in address):
        raise UndeliverableAddress("an email address has no spaces or control characters")
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise UndeliverableAddress("an email address looks like name@example.com")
    _check_local(local, allow_utf8_local)
    return MailAddress(local, domain, _ascii_domain(domain))
