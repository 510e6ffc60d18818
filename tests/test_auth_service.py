"""AuthService against the real MariaDB, through a real gRPC server on a free port."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
import uuid
from typing import Any

import grpc
import jwt
import pytest
from video2mp3.auth.v1 import auth_pb2 as pb
from video2mp3.auth.v1 import auth_pb2_grpc

from auth.credentials import Passwords
from auth.db import MIGRATIONS, Database, migrate
from auth.server import create_server
from auth.settings import Settings
from common.config import SettingsError
from tests.fixtures.auth import FAST_ARGON2, auth_env, unique_email

PASSWORD = "correct horse battery staple"
T = 10  # deadline of every call in these tests


def register(stub: auth_pb2_grpc.AuthServiceStub, email: str, password: str = PASSWORD) -> pb.User:
    return stub.Register(pb.RegisterRequest(email=email, password=password), timeout=T).user


def login(
    stub: auth_pb2_grpc.AuthServiceStub, email: str, password: str = PASSWORD, address: str = ""
) -> pb.LoginResponse:
    address = address or f"10.0.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    return stub.Login(pb.LoginRequest(email=email, password=password, client_address=address), timeout=T)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def error_of(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def user_row(infra: Any, user_id: str) -> tuple[Any, ...]:
    conn = infra.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT email, password_hash, role, created_at FROM users WHERE id = %s", (user_id,))
            row = cur.fetchone()
            assert row is not None
            return tuple(row)
    finally:
        conn.close()


def validate(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> pb.ValidateTokenResponse:
    return stub.ValidateToken(pb.ValidateTokenRequest(access_token=token), timeout=T)


# ----------------------------------------------------------------------------- register, login


def test_register_login_validate(auth_stub: Any, infra: Any, auth_settings: Settings) -> None:
    email = unique_email()
    user = register(auth_stub, email)
    assert user.email == email and user.role == pb.ROLE_USER and int(user.id) > 0

    stored_email, stored_hash, role, created_at = user_row(infra, user.id)
    assert stored_email == email and role == "user" and created_at is not None
    assert stored_hash.startswith("$argon2id$") and PASSWORD not in stored_hash

    response = login(auth_stub, email)
    assert response.token_type == "Bearer" and response.expires_in == auth_settings.access_token_ttl
    assert response.user.id == user.id

    claims = jwt.decode(
        response.access_token,
        auth_settings.jwt_secret,
        algorithms=["HS256"],
        audience=auth_settings.jwt_audience,
        issuer=auth_settings.jwt_issuer,
    )
    assert {"sub", "email", "role", "iat", "exp", "iss", "aud", "jti"} <= set(claims)
    assert claims["sub"] == user.id and claims["email"] == email and claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == auth_settings.access_token_ttl

    validated = validate(auth_stub, response.access_token)
    assert validated.user.id == user.id and validated.user.email == email
    assert validated.expires_at == claims["exp"]
    # Two logins give two distinct tokens (jti).
    assert login(auth_stub, email).access_token != response.access_token


def test_duplicate_email_in_any_letter_case(auth_stub: Any) -> None:
    email = unique_email("Mixed.Case")
    register(auth_stub, email)
    for variant in (email, email.upper(), email.lower(), email.swapcase(), f"  {email} "):
        error = error_of(lambda v=variant: register(auth_stub, v, "another long passphrase"))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    # Login is case-insensitive on the email too.
    assert login(auth_stub, email.upper()).user.email == email


def test_concurrent_registrations_of_one_email_create_one_user(auth_stub: Any, infra: Any) -> None:
    email = unique_email()
    codes: list[grpc.StatusCode] = []

    def attempt() -> None:
        try:
            register(auth_stub, email)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c.name for c in codes) == ["ALREADY_EXISTS"] * 5 + ["OK"]
    conn = infra.mysql()
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM users WHERE email_key = %s", (email.lower(),))
        assert cur.fetchone()[0] == 1
    conn.close()


def test_wrong_password_and_unknown_user_fail_the_same_way(auth_stub: Any) -> None:
    email = unique_email()
    register(auth_stub, email)
    wrong = error_of(lambda: login(auth_stub, email, "not the right passphrase"))
    unknown = error_of(lambda: login(auth_stub, unique_email(), PASSWORD))
    assert wrong.code() == unknown.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.details() == unknown.details()
    empty = error_of(lambda: login(auth_stub, "", ""))
    assert empty.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("", "email is required"),
        ("no-at-sign.example.com", "we can send to"),
        ("two@@example.com", "we can send to"),
        ("user@localhost", "we can send to"),
        ("user name@example.com", "we can send to"),
        ("user@exa mple.com", "we can send to"),
        ("user@example..com", "we can send to"),
        (".user@example.com", "we can send to"),
        ("user\x00@example.com", "control characters"),
        ("a" * 65 + "@example.com", "we can send to"),
        ("a@" + "b" * 250 + ".com", "at most 254"),
    ],
)
def test_invalid_emails_are_rejected(auth_stub: Any, email: str, reason: str) -> None:
    error = error_of(lambda: register(auth_stub, email))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.details()


@pytest.mark.parametrize(
    ("local", "valid"),
    [
        ("o'brien", True),
        ("x'--", True),
        ("a%_b", True),
        ("back`tick", True),
        ("semi;colon'or'1'='1", False),
        ('x"; DROP TABLE users; --', False),
        ("robert');DROP/**/TABLE/**/users;--", False),
    ],
)
def test_sql_metacharacters_in_emails_are_just_data(
    auth_stub: Any, infra: Any, local: str, valid: bool
) -> None:
    email = f"{local}{uuid.uuid4().hex[:6]}@example.com"
    if not valid:
        # Characters an address may not contain are refused cleanly, never a server error.
        assert code_of(lambda: register(auth_stub, email)) == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: login(auth_stub, email)) == grpc.StatusCode.UNAUTHENTICATED
        return
    user = register(auth_stub, email)
    assert user_row(infra, user.id)[0] == email
    assert login(auth_stub, email).user.id == user.id
    # "%" and "_" are not LIKE wildcards, quotes are data: a look-alike is another address.
    lookalike = email.replace("%", "x").replace("_", "y").replace("'", "z").replace("`", "q")
    assert code_of(lambda: login(auth_stub, lookalike)) == grpc.StatusCode.UNAUTHENTICATED


def test_sql_injection_attempt_leaves_users_table_intact(auth_stub: Any, infra: Any) -> None:
    victim = unique_email()
    register(auth_stub, victim)
    attack = "' OR '1'='1"
    assert code_of(lambda: login(auth_stub, attack, attack)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: login(auth_stub, f"{victim}' -- ", "x" * 8)) == grpc.StatusCode.UNAUTHENTICATED
    assert login(auth_stub, victim).user.email == victim


@pytest.mark.parametrize(
    ("email", "smtputf8"),
    [
        ("jose.garcia@bücher.example", False),  # an internationalised domain needs nothing more
        ("user@例子.广告", False),
        ("josé.garcía@example.com", True),  # non-ASCII before the @: only with an SMTPUTF8 relay
        ("ünïcödé@bücher.example", True),
        ("用户@例子.广告", True),
        ("δοκιμή@παράδειγμα.δοκιμή", True),
    ],
)
def test_unicode_emails(auth_settings: Settings, infra: Any, email: str, smtputf8: bool) -> None:
    local, domain = email.split("@")
    email = f"{local}{uuid.uuid4().hex[:6]}@{domain}"
    srv = create_server(dataclasses.replace(auth_settings, mail_smtputf8=smtputf8), port=0)
    srv.start()
    try:
        with infra.channel(f"127.0.0.1:{srv.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            user = register(stub, email)
            assert user.email == email and user_row(infra, user.id)[0] == email
            assert login(stub, email.upper()).user.id == user.id
            assert code_of(lambda: register(stub, email.upper())) == grpc.StatusCode.ALREADY_EXISTS
    finally:
        srv.stop(0.5)


def test_unicode_passphrase_is_normalised(auth_stub: Any) -> None:
    email = unique_email()
    composed = "caf\u00e9 au lait, s'il vous pla\u00eet"
    decomposed = "cafe\u0301 au lait, s'il vous pla\u0131\u0302t".replace("\u0131\u0302", "i\u0302")
    register(auth_stub, email, composed)
    assert login(auth_stub, email, decomposed).user.email == email


def test_password_rules(auth_stub: Any) -> None:
    def code(password: str) -> grpc.StatusCode:
        try:
            register(auth_stub, unique_email(), password)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    assert code("short") == grpc.StatusCode.INVALID_ARGUMENT
    assert code("7 chars") == grpc.StatusCode.INVALID_ARGUMENT
    assert code("password") == grpc.StatusCode.INVALID_ARGUMENT  # common password
    assert code("12345678") == grpc.StatusCode.INVALID_ARGUMENT
    # No composition rules: lower-case letters only, or spaces, are fine.
    assert code("abcdefgh") == grpc.StatusCode.OK
    assert code("eight ch") == grpc.StatusCode.OK
    # Long passphrases are welcome up to the bound.
    assert code("p" * 1024) == grpc.StatusCode.OK
    assert code("p" * 1025) == grpc.StatusCode.INVALID_ARGUMENT


def test_password_equal_to_email_is_refused(auth_stub: Any) -> None:
    email = unique_email()
    assert code_of(lambda: register(auth_stub, email, email)) == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_inputs_are_invalid_argument(auth_stub: Any) -> None:
    big = "x" * 100_000
    assert code_of(lambda: register(auth_stub, big + "@example.com")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: register(auth_stub, unique_email(), big)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: login(auth_stub, big + "@example.com")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: login(auth_stub, unique_email(), big)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: login(auth_stub, unique_email(), PASSWORD, address="1" * 200)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(lambda: validate(auth_stub, big)) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        code_of(
            lambda: auth_stub.IssueDownloadToken(
                pb.IssueDownloadTokenRequest(user_id="1", file_id=big), timeout=T
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


# ----------------------------------------------------------------------------------- throttling


def test_throttling_per_email_from_one_address(auth_stub: Any, auth_settings: Settings) -> None:
    email, address = unique_email(), "192.0.2.77-" + uuid.uuid4().hex[:6]
    register(auth_stub, email)
    for _ in range(auth_settings.login_max_failures_per_email):
        assert (
            code_of(lambda: login(auth_stub, email, "wrong passphrase!", address))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    # Even the right password is refused while throttled (no oracle for guessing) …
    throttled = error_of(lambda: login(auth_stub, email, PASSWORD, address))
    assert throttled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # … from that address only: the owner elsewhere logs in (tests/test_auth_throttle.py has more).
    assert login(auth_stub, email).user.email == email


def test_throttling_applies_to_unknown_emails_too(auth_stub: Any, auth_settings: Settings) -> None:
    email, address = unique_email("ghost"), "192.0.2.78-" + uuid.uuid4().hex[:6]
    for _ in range(auth_settings.login_max_failures_per_email):
        assert code_of(lambda: login(auth_stub, email, PASSWORD, address)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: login(auth_stub, email, PASSWORD, address)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_throttling_per_client_address(auth_stub: Any, auth_settings: Settings) -> None:
    address = f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    for _ in range(auth_settings.login_max_failures_per_address):
        # A different email each time: only the per-address count can trip.
        error = error_of(lambda: login(auth_stub, unique_email(), PASSWORD, address))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    email = unique_email()
    register(auth_stub, email)
    assert code_of(lambda: login(auth_stub, email, PASSWORD, address)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert login(auth_stub, email, PASSWORD, "203.0.113.9").user.email == email


def test_the_back_off_ends(infra: Any, auth_settings: Settings) -> None:
    settings = dataclasses.replace(auth_settings, login_backoff_seconds=1, login_max_failures_per_email=2)
    srv = create_server(settings, port=0)
    srv.start()
    try:
        with infra.channel(f"127.0.0.1:{srv.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            email = unique_email()
            register(stub, email)
            address = "192.0.2.79-" + uuid.uuid4().hex[:6]
            for _ in range(2):
                code_of(lambda: login(stub, email, "wrong passphrase!", address))
            throttled = code_of(lambda: login(stub, email, PASSWORD, address))
            assert throttled == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(1.3)
            assert login(stub, email, PASSWORD, address).user.email == email
    finally:
        srv.stop(0.5)


# --------------------------------------------------------------------------------------- tokens


def forge(settings: Settings, secret: str | None = None, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "1",
        "email": "someone@example.com",
        "role": "user",
        "typ": "access",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": uuid.uuid4().hex,
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, secret or settings.jwt_secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_forged_control_token_is_accepted(auth_stub: Any, auth_settings: Settings) -> None:
    """The forging helper makes valid tokens, so the rejections below test one thing each."""
    assert validate(auth_stub, forge(auth_settings)).user.id == "1"


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "other_secret",
        "wrong_audience",
        "wrong_issuer",
        "download_audience",
        "no_exp",
        "no_jti",
        "non_numeric_sub",
        "tampered_payload",
        "tampered_signature",
        "alg_none",
        "alg_hs512",
        "garbage",
        "empty",
    ],
)
def test_bad_access_tokens_are_rejected(auth_stub: Any, auth_settings: Settings, case: str) -> None:
    s, now = auth_settings, int(time.time())
    good = forge(s)
    header, payload, signature = good.split(".")
    tokens = {
        "expired": forge(s, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not_yet_valid": forge(s, nbf=now + 3600, exp=now + 7200),
        "issued_in_future": forge(s, iat=now + 3600, nbf=now + 3600, exp=now + 7200),
        "other_secret": forge(s, secret="another secret of at least thirty-two bytes!!"),
        "wrong_audience": forge(s, aud="somebody-else"),
        "wrong_issuer": forge(s, iss="https://evil.example"),
        "download_audience": forge(s, aud=s.download_audience),
        "no_exp": forge(s, exp=None),
        "no_jti": forge(s, jti=None),
        "non_numeric_sub": forge(s, sub="admin"),
        "tampered_payload": ".".join(
            [
                header,
                b64(
                    json.dumps(
                        {**jwt.decode(good, options={"verify_signature": False}), "role": "admin"}
                    ).encode()
                ),
                signature,
            ]
        ),
        "tampered_signature": ".".join(
            [header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")]
        ),
        "alg_none": ".".join(
            [
                b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()),
                payload,
                "",
            ]
        ),
        "alg_hs512": jwt.encode(
            jwt.decode(good, options={"verify_signature": False}), s.jwt_secret, algorithm="HS512"
        ),
        "garbage": "not.a.jwt",
        "empty": "",
    }
    error = error_of(lambda: validate(auth_stub, tokens[case]))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "invalid or expired token"


def test_real_tokens_expire(infra: Any, auth_settings: Settings) -> None:
    settings = dataclasses.replace(auth_settings, access_token_ttl=1, jwt_leeway_seconds=0)
    srv = create_server(settings, port=0)
    srv.start()
    try:
        with infra.channel(f"127.0.0.1:{srv.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            email = unique_email()
            register(stub, email)
            response = login(stub, email)
            token = response.access_token
            assert validate(stub, token).user.email == email
            download = issue_download(stub, response.user.id, "f1", ttl=1).download_token
            assert validate_download(stub, download, "f1").file_id == "f1"
            time.sleep(2.1)
            assert code_of(lambda: validate(stub, token)) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: validate_download(stub, download, "f1")) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.stop(0.5)


def issue_download(stub: Any, user_id: str, file_id: str, ttl: int = 0) -> pb.IssueDownloadTokenResponse:
    return stub.IssueDownloadToken(
        pb.IssueDownloadTokenRequest(user_id=user_id, file_id=file_id, ttl_seconds=ttl), timeout=T
    )


def validate_download(stub: Any, token: str, file_id: str) -> pb.ValidateDownloadTokenResponse:
    return stub.ValidateDownloadToken(
        pb.ValidateDownloadTokenRequest(download_token=token, file_id=file_id), timeout=T
    )


def test_download_token_is_for_one_file_of_its_owner(auth_stub: Any, auth_settings: Settings) -> None:
    email = unique_email()
    user = register(auth_stub, email)
    file_a, file_b = uuid.uuid4().hex, uuid.uuid4().hex
    issued = issue_download(auth_stub, user.id, file_a)
    now = int(time.time())
    assert (
        now + auth_settings.download_token_ttl - 5
        <= issued.expires_at
        <= now + auth_settings.download_token_ttl
    )

    ok = validate_download(auth_stub, issued.download_token, file_a)
    assert ok.file_id == file_a and ok.user.id == user.id and ok.user.email == email

    assert code_of(lambda: validate_download(auth_stub, issued.download_token, file_b)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(lambda: validate_download(auth_stub, issued.download_token, "")) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Not a login token, and a login token is not a download token.
    assert code_of(lambda: validate(auth_stub, issued.download_token)) == grpc.StatusCode.UNAUTHENTICATED
    access = login(auth_stub, email).access_token
    assert code_of(lambda: validate_download(auth_stub, access, file_a)) == grpc.StatusCode.UNAUTHENTICATED


def test_download_token_lifetime_is_capped(auth_stub: Any, auth_settings: Settings) -> None:
    user = register(auth_stub, unique_email())
    capped = issue_download(auth_stub, user.id, "f1", ttl=10 * 365 * 86400)
    assert capped.expires_at <= int(time.time()) + auth_settings.download_token_max_ttl
    short = issue_download(auth_stub, user.id, "f1", ttl=60)
    assert int(time.time()) + 55 <= short.expires_at <= int(time.time()) + 60


def test_download_token_requests_are_validated(auth_stub: Any) -> None:
    user = register(auth_stub, unique_email())
    assert code_of(lambda: issue_download(auth_stub, "999999999", "f")) == grpc.StatusCode.NOT_FOUND
    for bad_user in ("", "abc", "-1", "0", "1; DROP TABLE users", "9" * 30):
        assert (
            code_of(lambda u=bad_user: issue_download(auth_stub, u, "f")) == grpc.StatusCode.INVALID_ARGUMENT
        )
    assert code_of(lambda: issue_download(auth_stub, user.id, "")) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(lambda: issue_download(auth_stub, user.id, "f", ttl=-5)) == grpc.StatusCode.INVALID_ARGUMENT
    )
    # A download token signed with another secret is refused.
    now = int(time.time())
    other = jwt.encode(
        {"sub": user.id, "fid": "f", "typ": "download", "iat": now, "nbf": now, "exp": now + 60,
         "iss": "video2mp3-auth", "aud": "video2mp3-download", "jti": "x"},
        "another secret of at least thirty-two bytes!!",
        algorithm="HS256",
    )  # fmt: skip
    assert code_of(lambda: validate_download(auth_stub, other, "f")) == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------------------- hashing, migrations


def test_password_is_rehashed_on_login_when_parameters_change(
    infra: Any, auth_stub: Any, auth_settings: Settings
) -> None:
    email = unique_email()
    user = register(auth_stub, email)
    old_hash = user_row(infra, user.id)[1]
    assert "m=256,t=1,p=1" in old_hash
    stronger = dataclasses.replace(auth_settings, argon2_time_cost=2, argon2_memory_kib=512)
    srv = create_server(stronger, port=0)
    srv.start()
    try:
        with infra.channel(f"127.0.0.1:{srv.port}") as channel:
            login(auth_pb2_grpc.AuthServiceStub(channel), email)
    finally:
        srv.stop(0.5)
    new_hash = user_row(infra, user.id)[1]
    assert new_hash != old_hash and new_hash.startswith("$argon2id$") and "m=512,t=2,p=1" in new_hash
    # The old server (old parameters) still accepts the password, and rehashes back.
    assert login(auth_stub, email).user.id == user.id


def test_production_argon2_defaults(infra: Any) -> None:
    env = {k: v for k, v in auth_env(infra).items() if k not in FAST_ARGON2}
    settings = Settings.from_env(env)
    assert (settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism) == (
        3,
        65536,
        4,
    )
    passwords = Passwords(settings)
    hashed = passwords.hash(PASSWORD)
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert passwords.verify(hashed, PASSWORD) and not passwords.verify(hashed, PASSWORD + "!")
    assert not passwords.needs_rehash(hashed)


def test_migrations_are_versioned_idempotent_and_safe_concurrently(
    infra: Any, auth_settings: Settings
) -> None:
    admin = infra.mysql()
    db_name = f"{infra.mysql_db}_mig"[:64]
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4")
    try:
        settings = dataclasses.replace(auth_settings, mysql_db=db_name)
        results: list[list[int]] = []
        errors: list[BaseException] = []

        def run() -> None:
            db = Database(settings)
            try:
                results.append(migrate(db))
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
            finally:
                db.close()

        threads = [threading.Thread(target=run) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        applied = sorted(v for r in results for v in r)
        every = [version for version, _name, _statements in MIGRATIONS]
        assert applied == every  # each migration applied exactly once
        db = Database(settings)
        assert migrate(db) == []  # and a later start has nothing to do
        db.close()
        with admin.cursor() as cur:
            cur.execute(f"SELECT version FROM `{db_name}`.auth_schema_migrations ORDER BY version")  # noqa: S608
            assert [r[0] for r in cur.fetchall()] == every
            cur.execute(f"SHOW COLUMNS FROM `{db_name}`.users")
            assert {r[0] for r in cur.fetchall()} >= {"id", "email", "password_hash", "role", "created_at"}
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db_name}`")
        admin.close()


def test_database_outage_is_unavailable(infra: Any, auth_settings: Settings) -> None:
    from auth.server import SERVICE_NAME
    from auth.service import AuthServicer
    from common import grpc_server
    from testing.processes import free_port

    # A servicer whose database is a port where nothing listens.
    dead = dataclasses.replace(auth_settings, mysql_port=free_port(), mysql_connect_timeout=1)
    servicer = AuthServicer(dead, Database(dead))
    srv = grpc_server.create_server(
        [(SERVICE_NAME, lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server))],
        port=0,
        tls=infra.tls("auth"),
    )
    srv.start()
    try:
        with infra.channel(f"127.0.0.1:{srv.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            error = error_of(lambda: login(stub, unique_email()))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == "user database unavailable"
            assert code_of(lambda: register(stub, unique_email())) == grpc.StatusCode.UNAVAILABLE
            assert code_of(lambda: issue_download(stub, "1", "f")) == grpc.StatusCode.UNAVAILABLE
            # Token validation needs no database and keeps working.
            assert validate(stub, forge(auth_settings)).user.id == "1"
    finally:
        srv.stop(0.5)


# ------------------------------------------------------------------------------------- settings


def test_settings_require_a_jwt_secret(infra: Any) -> None:
    env = auth_env(infra)
    del env["JWT_SECRET"]
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({**env, "JWT_SECRET": "short"})
    with pytest.raises(SettingsError, match="AUTH_PORT"):
        Settings.from_env({**auth_env(infra), "AUTH_PORT": "five thousand"})


def test_settings_defaults_and_secret_not_in_repr(infra: Any) -> None:
    env = {k: v for k, v in auth_env(infra).items() if k not in {"AUTH_PORT", *FAST_ARGON2}}
    settings = Settings.from_env(env)
    assert settings.port == 5000 and settings.bind_host == "127.0.0.1"
    assert settings.access_token_ttl == 3600
    assert settings.jwt_secret not in repr(settings)
