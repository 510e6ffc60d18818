"""Email and password rules, and argon2id hashing.

Passwords follow NIST SP 800-63B: at least 8 characters, long passphrases welcome (bounded
so hashing stays cheap to refuse), no composition rules, a small list of the most common
passwords refused. Unicode is normalised (NFKC) before hashing so the same passphrase typed
on different keyboards matches.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auth.settings import Settings
from common.email_address import UndeliverableAddress, parse_address

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_EMAIL_CHARS = 254

# A few of the most common passwords of at least 8 characters (SP 800-63B §5.1.1.2 asks
# for a blocklist; this is the short, conservative end of one).
COMMON_PASSWORDS = frozenset(
    {
        "password",
        "password1",
        "password123",
        "12345678",
        "123456789",
        "1234567890",
        "qwertyuiop",
        "qwerty123",
        "11111111",
        "00000000",
        "iloveyou",
        "sunshine",
        "princess",
        "football",
        "baseball",
        "letmein1",
        "welcome1",
        "abcd1234",
        "1q2w3e4r",
        "qwer1234",
        "passw0rd",
        "trustno1",
        "superman",
        "starwars",
    }
)


class CredentialError(ValueError):
    """Input that breaks the rules; the message is safe to show to the user."""


def normalize_email(raw: str) -> str:
    return unicodedata.normalize("NFC", raw.strip())


def email_key(email: str) -> str:
    """What uniqueness and look-ups compare: the address in lower case."""
    return email.lower()


def validate_email(raw: str, allow_utf8_local: bool = False) -> str:
    """The address as stored (NFC, trimmed), if the mail path can deliver to it: the rule
    the notifier sends by (common/email_address.py)."""
    email = normalize_email(raw)
    if not email:
        raise CredentialError("email is required")
    if len(email) > MAX_EMAIL_CHARS:
        raise CredentialError(f"email must be at most {MAX_EMAIL_CHARS} characters")
    try:
        parse_address(email, allow_utf8_local=allow_utf8_local)
    except UndeliverableAddress as error:
        raise CredentialError(f"email is not an address we can send to: {error}") from None
    return email


def normalize_password(raw: str) -> str:
    return unicodedata.normalize("NFKC", raw)


def validate_new_password(raw: str, email: str) -> str:
    password = normalize_password(raw)
    if len(password) < MIN_PASSWORD_CHARS:
        raise CredentialError(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise CredentialError(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or lowered == email.lower() or lowered == email.lower().split("@")[0]:
        raise CredentialError("password is too common or too easy to guess; choose another")
    return password


def make_hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


class HashBusy(Exception):
    """Every hashing slot is taken and the queue is full: refuse now, retry later."""


class HashGate:
    """At most ``concurrency`` hashes at once and ``queue`` more waiting; a call beyond that
    is refused at once instead of taking another server thread. So however many sign-ups
    and logins arrive, the server's other threads stay free for token checks."""

    def __init__(self, concurrency: int, queue: int, wait_seconds: float = 30.0) -> None:
        self._slots = threading.BoundedSemaphore(concurrency)
        self._admitted = threading.BoundedSemaphore(concurrency + queue)
        self._wait = wait_seconds

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._admitted.acquire(blocking=False):
            raise HashBusy
        try:
            if not self._slots.acquire(timeout=self._wait):
                raise HashBusy
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._admitted.release()


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self.hasher = make_hasher(settings)
        self.gate = HashGate(settings.hash_concurrency, settings.hash_queue)
        # Verified against for unknown emails, so both failures cost the same time.
        self._dummy_hash = self.hasher.hash("not a real password: equalises timing")

    def hash(self, password: str) -> str:
        """argon2id of ``password``; HashBusy when the hashing slots and queue are full."""
        with self.gate.slot():
            return self.hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; HashBusy when the hashing slots and queue are full."""
        with self.gate.slot():
            try:
                return (
                    self.hasher.verify(stored_hash or self._dummy_hash, password) and stored_hash is not None
                )
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True
