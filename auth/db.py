"""MySQL access for the auth service: a small connection pool and versioned migrations.

Connections are never shared between threads: a call borrows one from the pool and gives
it back (or drops it after a connection error). Every query is parameterised.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql
import pymysql.cursors

from auth.settings import Settings

log = logging.getLogger("auth.db")

# Errors that mean "the database is not reachable right now" (→ UNAVAILABLE), as opposed
# to errors in our own queries.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    OSError,
)

# Versioned schema. Append only: a released migration is never edited.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "users",
        [
            """
            CREATE TABLE IF NOT EXISTS users (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                email VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
                email_key VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                password_hash VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                role VARCHAR(16) CHARACTER SET ascii NOT NULL DEFAULT 'user',
                created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                UNIQUE KEY users_email_key (email_key)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
            """,
        ],
    ),
    (
        2,
        "login_failures",
        [
            """
            CREATE TABLE IF NOT EXISTS login_failures (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                kind VARCHAR(8) CHARACTER SET ascii NOT NULL,
                subject BINARY(32) NOT NULL,
                failed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                KEY login_failures_subject (kind, subject, failed_at),
                KEY login_failures_time (failed_at)
            ) ENGINE=InnoDB
            """,
        ],
    ),
    (
        3,
        "throttle",
        [
            # One row per throttled subject (auth/throttle.py): counted and checked in one
            # transaction with the row locked. login_failures is no longer used; a later
            # migration drops it once no replica of the previous version runs.
            """
            CREATE TABLE IF NOT EXISTS throttle (
                kind VARCHAR(8) CHARACTER SET ascii NOT NULL,
                subject BINARY(32) NOT NULL,
                failures INT UNSIGNED NOT NULL DEFAULT 0,
                window_start DATETIME(6) NOT NULL,
                blocked_until DATETIME(6) NULL,
                succeeded_at DATETIME(6) NULL,
                PRIMARY KEY (kind, subject),
                KEY throttle_window (window_start)
            ) ENGINE=InnoDB
            """,
        ],
    ),
]


class Database:
    """A bounded pool of pymysql connections (autocommit)."""

    def __init__(self, settings: Settings, max_idle: int = 16) -> None:
        self.settings = settings
        self._idle: queue.LifoQueue[pymysql.connections.Connection] = queue.LifoQueue(maxsize=max_idle)
        self._closed = threading.Event()

    def _connect(self) -> pymysql.connections.Connection:
        s = self.settings
        return pymysql.connect(
            host=s.mysql_host,
            port=s.mysql_port,
            user=s.mysql_user,
            password=s.mysql_password,
            database=s.mysql_db,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=max(1, int(s.mysql_connect_timeout)),
            read_timeout=30,
            write_timeout=30,
        )

    @contextmanager
    def connection(self) -> Iterator[pymysql.connections.Connection]:
        conn: pymysql.connections.Connection | None = None
        try:
            conn = self._idle.get_nowait()
            conn.ping()  # an idle connection may have been closed by the server
        except queue.Empty:
            conn = None
        except (pymysql.err.Error, OSError):
            self._discard(conn)
            conn = None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        except CONNECTION_ERRORS:
            self._discard(conn)
            raise
        except BaseException:
            # Our own error: the connection itself is fine, but roll back anything open.
            try:
                conn.rollback()
            except CONNECTION_ERRORS:
                self._discard(conn)
                raise
            self._release(conn)
            raise
        else:
            self._release(conn)

    @contextmanager
    def cursor(self) -> Iterator[pymysql.cursors.Cursor]:
        with self.connection() as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self) -> Iterator[pymysql.cursors.Cursor]:
        """A cursor inside one transaction: committed when the block ends, rolled back when it
        raises. Rows read with ``SELECT … FOR UPDATE`` stay locked until then."""
        with self.connection() as conn:
            conn.begin()
            with conn.cursor() as cur:
                yield cur
            conn.commit()

    def _release(self, conn: pymysql.connections.Connection) -> None:
        if self._closed.is_set():
            self._discard(conn)
            return
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            self._discard(conn)

    @staticmethod
    def _discard(conn: pymysql.connections.Connection | None) -> None:
        if conn is None:
            return
        with contextlib.suppress(Exception):  # already broken: nothing more to do
            conn.close()

    def close(self) -> None:
        self._closed.set()
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return


def _lock_name(database: str) -> str:
    # GET_LOCK names are server-wide: one lock per database, short enough for every server.
    return "v2m-auth-migrate-" + hashlib.sha256(database.encode()).hexdigest()[:32]


def migrate_when_reachable(db: Database, timeout: float) -> list[int]:
    """``migrate``, retrying with back-off while MySQL cannot be reached (up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            return migrate(db)
        except CONNECTION_ERRORS as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("MySQL unreachable; retrying", extra={"error": repr(error), "retry_in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def migrate(db: Database, lock_timeout: int = 60) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied now.

    Safe when several replicas start together: they serialise on a named lock, and each
    re-reads the applied versions once it holds it.
    """
    applied_now: list[int] = []
    name = _lock_name(db.settings.mysql_db)
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, %s)", (name, lock_timeout))
        row = cur.fetchone()
        if not row or row[0] != 1:
            raise RuntimeError("could not take the schema migration lock")
        try:
            cur.execute(
                """
                CREATE TABLE IF NOT EXISTS auth_schema_migrations (
                    version INT NOT NULL PRIMARY KEY,
                    name VARCHAR(100) NOT NULL,
                    applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                ) ENGINE=InnoDB
                """
            )
            cur.execute("SELECT version FROM auth_schema_migrations")
            done = {int(r[0]) for r in cur.fetchall()}
            for version, title, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO auth_schema_migrations (version, name) VALUES (%s, %s)", (version, title)
                )
                applied_now.append(version)
                log.info("schema migration applied", extra={"version": version, "migration": title})
        finally:
            cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
    return applied_now
