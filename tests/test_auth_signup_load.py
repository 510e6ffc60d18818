"""Sign-ups cannot starve auth (issue 19 item 4): limited per client address (in MySQL, so
across replicas), and password hashing never takes the threads token checks need."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from argon2 import PasswordHasher
from video2mp3.auth.v1 import auth_pb2 as pb

from auth.settings import Settings
from common.config import SettingsError
from testing.processes import wait_for
from tests.fixtures.auth import auth_env, unique_email
from tests.test_auth_throttle import PASSWORD, address, auth_stub_with
from tests.test_gateway_identity import assert_json_error

T = 30


def register_code(stub: Any, addr: str) -> grpc.StatusCode:
    try:
        stub.Register(
            pb.RegisterRequest(email=unique_email(), password=PASSWORD, client_address=addr), timeout=T
        )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_sign_ups_are_limited_per_address_across_replicas(auth_settings: Settings) -> None:
    addr = address()
    with (
        auth_stub_with(auth_settings, register_max_per_address=3) as first,
        auth_stub_with(auth_settings, register_max_per_address=3) as second,
    ):
        assert [register_code(s, addr) for s in (first, second, first)] == [grpc.StatusCode.OK] * 3
        assert register_code(second, addr) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert register_code(first, addr) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert register_code(second, address()) == grpc.StatusCode.OK  # other addresses are not held back


def test_the_gateway_passes_the_client_address_honouring_trusted_proxies(
    infra: Any, auth_settings: Settings, auth_gateway_factory: Any
) -> None:
    settings = dataclasses.replace(auth_settings, register_max_per_address=2)
    from auth.server import create_server

    srv = create_server(settings, port=0)
    srv.start()
    try:
        app = auth_gateway_factory(AUTH_SVC_ADDRESS=f"127.0.0.1:{srv.port}", TRUSTED_PROXY_COUNT="1")
        http = app.test_client()

        def sign_up(forwarded_for: str) -> Any:
            return http.post(
                "/register",
                json={"email": unique_email(), "password": PASSWORD},
                headers={"X-Forwarded-For": forwarded_for},
            )

        client = f"203.0.113.{threading.get_ident() % 250}"
        assert sign_up(client).status_code == 201
        assert sign_up(f"10.9.9.9, {client}").status_code == 201  # the proxy's own hop counts
        refused = sign_up(client)
        assert_json_error(refused, 429, "too_many_requests")
        assert 0 < int(refused.headers["Retry-After"]) <= settings.register_window_seconds
        assert sign_up("198.51.100.200").status_code == 201
    finally:
        srv.stop(0.5)


def test_hashing_never_takes_the_threads_token_checks_need(
    auth_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing held up (as by 200 sign-ups at once): sign-ups past the hashing slots and queue
    are refused at once, and a token check is answered meanwhile (was: every server thread
    waited on hashing and the token check timed out)."""
    with auth_stub_with(auth_settings, grpc_max_workers=4, hash_concurrency=1, hash_queue=1) as stub:
        email = unique_email()
        stub.Register(pb.RegisterRequest(email=email, password=PASSWORD, client_address=address()), timeout=T)
        token = stub.Login(
            pb.LoginRequest(email=email, password=PASSWORD, client_address=address()), timeout=T
        ).access_token

        entered, release = threading.Semaphore(0), threading.Event()
        real_hash = PasswordHasher.hash

        def held_hash(self: PasswordHasher, password: str | bytes, **kwargs: Any) -> str:
            entered.release()
            release.wait(60)
            return real_hash(self, password, **kwargs)

        monkeypatch.setattr(PasswordHasher, "hash", held_hash)
        with ThreadPoolExecutor(8) as pool:
            try:
                futures = [pool.submit(register_code, stub, address()) for _ in range(8)]
                assert entered.acquire(timeout=T), "no sign-up reached the hasher"
                # One hashing, one waiting: the other six are refused without waiting.
                wait_for(lambda: sum(f.done() for f in futures) >= 6, timeout=T, what="six sign-ups answered")
                refused = Counter(f.result() for f in futures if f.done())
                assert refused == {grpc.StatusCode.RESOURCE_EXHAUSTED: 6}, refused
                user = stub.ValidateToken(pb.ValidateTokenRequest(access_token=token), timeout=5).user
                assert user.email == email
            finally:
                release.set()
            results = Counter(f.result(timeout=T) for f in futures)
        assert results == {grpc.StatusCode.RESOURCE_EXHAUSTED: 6, grpc.StatusCode.OK: 2}, results


def test_hashing_slots_must_leave_server_threads_free(infra: Any) -> None:
    env = auth_env(infra, AUTH_GRPC_MAX_WORKERS="4", HASH_CONCURRENCY="2", HASH_QUEUE="2")
    with pytest.raises(SettingsError, match="HASH_CONCURRENCY"):
        Settings.from_env(env)


def test_logins_refused_as_busy_do_not_count_as_failures(
    auth_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While hashing is saturated, logins are refused at once; they were never checked, so
    they count for nothing: the owner's next login from that address goes through."""
    with auth_stub_with(
        auth_settings, grpc_max_workers=4, hash_concurrency=1, hash_queue=0, login_max_failures_per_email=2
    ) as stub:
        email, addr = unique_email(), address()
        stub.Register(pb.RegisterRequest(email=email, password=PASSWORD, client_address=address()), timeout=T)
        entered, release = threading.Semaphore(0), threading.Event()
        real_verify = PasswordHasher.verify

        def held_verify(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
            entered.release()
            release.wait(60)
            return real_verify(self, hash, password)

        def login(who: str, password: str = PASSWORD) -> grpc.StatusCode:
            try:
                stub.Login(pb.LoginRequest(email=who, password=password, client_address=addr), timeout=T)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        monkeypatch.setattr(PasswordHasher, "verify", held_verify)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(login, unique_email())  # another account, same address: holds the slot
            try:
                assert entered.acquire(timeout=T)
                busy = [login(email, "wrong passphrase!") for _ in range(5)]
                assert busy == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
            finally:
                release.set()
            assert held.result(timeout=T) == grpc.StatusCode.UNAUTHENTICATED
        monkeypatch.setattr(PasswordHasher, "verify", real_verify)
        assert login(email) == grpc.StatusCode.OK
