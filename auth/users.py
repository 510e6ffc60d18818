"""Users in MySQL (parameterised queries only)."""

from __future__ import annotations

from dataclasses import dataclass

import pymysql

from auth.credentials import email_key
from auth.db import Database

ROLE_USER = "user"
ROLE_ADMIN = "admin"


class DuplicateEmail(Exception):
    pass


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    password_hash: str
    role: str


_COLUMNS = "id, email, password_hash, role"


def _row(values: tuple[object, ...] | None) -> UserRow | None:
    if values is None:
        return None
    user_id, email, password_hash, role = values
    return UserRow(int(str(user_id)), str(email), str(password_hash), str(role))


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, email: str, password_hash: str, role: str = ROLE_USER) -> UserRow:
        with self.db.cursor() as cur:
            try:
                cur.execute(
                    "INSERT INTO users (email, email_key, password_hash, role) VALUES (%s, %s, %s, %s)",
                    (email, email_key(email), password_hash, role),
                )
            except pymysql.err.IntegrityError as error:
                if error.args and error.args[0] == 1062:  # ER_DUP_ENTRY
                    raise DuplicateEmail(email) from error
                raise
            return UserRow(int(cur.lastrowid), email, password_hash, role)

    def by_email(self, email: str) -> UserRow | None:
        with self.db.cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM users WHERE email_key = %s", (email_key(email),))  # noqa: S608
            return _row(cur.fetchone())

    def by_id(self, user_id: int) -> UserRow | None:
        with self.db.cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))  # noqa: S608
            return _row(cur.fetchone())

    def update_hash(self, user_id: int, old_hash: str, new_hash: str) -> None:
        with self.db.cursor() as cur:
            # Compare-and-set: a concurrent password change is never overwritten.
            cur.execute(
                "UPDATE users SET password_hash = %s WHERE id = %s AND password_hash = %s",
                (new_hash, user_id, old_hash),
            )
