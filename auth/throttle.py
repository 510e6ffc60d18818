"""Login and sign-up throttling, counted in MySQL so every replica sees the same counts.

Each check-and-count is one transaction on locked rows (``INSERT … ON DUPLICATE KEY
UPDATE`` creates or ages the row, ``SELECT … FOR UPDATE`` holds it): concurrent guesses
queue on the row, so no burst gets more attempts checked than the limit allows. A login
attempt is counted as a failure when it is admitted, before the password is verified,
and taken back if it succeeds.

Logins slow an attacker down without locking the owner out:

* account + address: ``free`` failures, then exponential back-off (``backoff`` seconds,
  doubling per further failure, capped). Only that address waits; the owner elsewhere
  does not.
* account (all addresses) and address (all accounts): past their limit within the window,
  attempts are spaced ``slowdown`` seconds apart — a delay, never a ban — and an address
  that has logged in to this account before is not held back by them at all.

Sign-ups are counted per client address within a window (``RegistrationLimit``).
Subjects are stored as SHA-256 digests: fixed width, no raw emails or addresses kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import pymysql

from auth.db import Database

ACCOUNT = "account"
ADDRESS = "address"
PAIR = "pair"
REGISTER = "register"
# MySQL's deadlock and lock-wait errors: the transaction was rolled back; try it again.
_RETRYABLE = (1213, 1205)
_TRIES = 3
# How long an address that logged in to an account stays "known" for it.
KNOWN_ADDRESS_DAYS = 90


class Throttled(Exception):
    """Refused for now; ``retry_after`` is how many seconds until an attempt may pass."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"throttled; retry after {retry_after:.0f} s")
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True)
class LoginPolicy:
    window_seconds: int = 900
    free_failures: int = 5  # per account + address, before back-off
    backoff_seconds: int = 30
    backoff_max_seconds: int = 900
    max_failures_per_account: int = 50  # all addresses, per window, before slowdown
    max_failures_per_address: int = 20  # all accounts, per window, before slowdown
    slowdown_seconds: int = 10

    def backoff(self, failures: int) -> int:
        """Seconds to wait after the ``failures``-th failure of one account from one address."""
        if failures < self.free_failures:
            return 0
        return int(min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (failures - self.free_failures)))


def _subject(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class _Row:
    failures: int
    wait: float  # seconds until blocked_until; 0 when not blocked
    known: bool  # a login succeeded for this subject before


_ENSURE = (
    "INSERT INTO throttle (kind, subject, failures, window_start) VALUES (%s, %s, 0, NOW(6)) "
    "ON DUPLICATE KEY UPDATE "
    # Evaluated left to right: failures still sees the old window_start.
    "failures = IF(window_start < NOW(6) - INTERVAL %s SECOND, 0, failures), "
    "window_start = IF(window_start < NOW(6) - INTERVAL %s SECOND, NOW(6), window_start)"
)
_LOCK = (
    "SELECT failures, GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), IFNULL(blocked_until, NOW(6)))), "
    "succeeded_at IS NOT NULL, "
    "GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), window_start + INTERVAL %s SECOND)) "
    "FROM throttle WHERE kind = %s AND subject = %s FOR UPDATE"
)
_COUNT = (
    "UPDATE throttle SET failures = failures + 1, "
    "blocked_until = IF(%s > 0, NOW(6) + INTERVAL %s SECOND, blocked_until) "
    "WHERE kind = %s AND subject = %s"
)

_UNCOUNT = "UPDATE throttle SET failures = GREATEST(failures, 1) - 1 WHERE kind = %s AND subject = %s"


class _Counters:
    def __init__(self, db: Database, window_seconds: int) -> None:
        self.db = db
        self.window = window_seconds

    def lock(self, cur: pymysql.cursors.Cursor, kind: str, subject: bytes) -> tuple[_Row, float]:
        """The row (created or aged first), locked until the transaction ends; and the
        seconds left in its window."""
        cur.execute(_ENSURE, (kind, subject, self.window, self.window))
        cur.execute(_LOCK, (self.window, kind, subject))
        found = cur.fetchone()
        assert found is not None  # the INSERT above made the row; this transaction holds it
        failures, wait_us, known, window_left_us = found
        return _Row(int(failures), int(wait_us) / 1e6, bool(known)), int(window_left_us) / 1e6

    @staticmethod
    def count(cur: pymysql.cursors.Cursor, kind: str, subject: bytes, block_seconds: int) -> None:
        cur.execute(_COUNT, (block_seconds, block_seconds, kind, subject))

    def prune(self, cur: pymysql.cursors.Cursor) -> None:
        """Drop rows idle for a window that hold nothing worth keeping."""
        cur.execute(
            "DELETE FROM throttle WHERE window_start < NOW(6) - INTERVAL %s SECOND"
            " AND (blocked_until IS NULL OR blocked_until < NOW(6))"
            " AND (succeeded_at IS NULL OR succeeded_at < NOW(6) - INTERVAL %s DAY) LIMIT 500",
            (self.window, KNOWN_ADDRESS_DAYS),
        )


def _retrying(run: Callable[[], None]) -> None:
    """Run ``run()`` again when MySQL rolled it back for a deadlock or a lock wait."""
    for attempt in range(_TRIES):
        try:
            run()
            return
        except pymysql.err.OperationalError as error:
            if not error.args or error.args[0] not in _RETRYABLE or attempt == _TRIES - 1:
                raise


class LoginThrottle:
    def __init__(self, db: Database, policy: LoginPolicy) -> None:
        self.policy = policy
        self.counters = _Counters(db, policy.window_seconds)
        self.db = db

    def _keys(self, account: str, address: str) -> list[tuple[str, bytes]]:
        # Always locked in this order, so two attempts never wait on each other in a cycle.
        keys = [(ACCOUNT, _subject(account))]
        if address:
            keys.append((ADDRESS, _subject(address)))
        keys.append((PAIR, _subject(account, address)))
        return keys

    def admit(self, account: str, address: str) -> None:
        """Let one attempt on ``account`` from ``address`` through, counted as a failure
        until ``succeeded``; or raise Throttled."""
        policy = self.policy
        limits = {ACCOUNT: policy.max_failures_per_account, ADDRESS: policy.max_failures_per_address}

        def run() -> None:
            with self.db.transaction() as cur:
                rows = {
                    kind: self.counters.lock(cur, kind, subject)[0]
                    for kind, subject in self._keys(account, address)
                }
                pair = rows[PAIR]
                waits = [pair.wait]
                if not pair.known:
                    waits += [
                        row.wait
                        for kind, row in rows.items()
                        if kind in limits and row.failures >= limits[kind]
                    ]
                if max(waits) > 0:
                    raise Throttled(max(waits))
                for kind, subject in self._keys(account, address):
                    failures = rows[kind].failures + 1
                    if kind == PAIR:
                        block = policy.backoff(failures)
                    else:
                        block = policy.slowdown_seconds if failures >= limits[kind] else 0
                    self.counters.count(cur, kind, subject, block)
                self.counters.prune(cur)

        _retrying(run)

    def succeeded(self, account: str, address: str) -> None:
        """The admitted attempt was right: clear the pair's back-off, remember the address
        as known for this account, and take back the failure counted on admission."""

        def run() -> None:
            with self.db.transaction() as cur:
                for kind, subject in self._keys(account, address):
                    if kind == PAIR:
                        cur.execute(
                            "UPDATE throttle SET failures = 0, blocked_until = NULL, succeeded_at = NOW(6)"
                            " WHERE kind = %s AND subject = %s",
                            (kind, subject),
                        )
                    else:
                        cur.execute(_UNCOUNT, (kind, subject))

        _retrying(run)

    def release(self, account: str, address: str) -> None:
        """The admitted attempt was never checked (the server was busy or the database went
        away): take back the failure counted on admission."""

        def run() -> None:
            with self.db.transaction() as cur:
                for kind, subject in self._keys(account, address):
                    cur.execute(_UNCOUNT, (kind, subject))

        _retrying(run)


class RegistrationLimit:
    """At most ``limit`` sign-up attempts per client address within the window."""

    def __init__(self, db: Database, limit: int, window_seconds: int) -> None:
        self.db = db
        self.limit = limit
        self.counters = _Counters(db, window_seconds)

    def admit(self, address: str) -> None:
        subject = _subject(address)

        def run() -> None:
            with self.db.transaction() as cur:
                row, window_left = self.counters.lock(cur, REGISTER, subject)
                if row.failures >= self.limit:
                    raise Throttled(window_left)
                self.counters.count(cur, REGISTER, subject, 0)

        _retrying(run)
