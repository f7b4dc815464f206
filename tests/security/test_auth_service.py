"""Attacks on the auth service itself, against a real Redis: racing the login lockout,
dodging it by reconnecting, scope floods, deleted accounts on the catalog, and what the
logs must say about failed logins."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import pathlib
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import redis

from services.auth import redis_keys as keys
from services.auth.accounts import AccountStore
from services.auth.identity import Identities
from services.auth.server import ADMIN_ACCOUNT_FAILURE_FACTOR, AuthServicer
from services.auth.settings import AuthSettings
from services.auth.signing import KeyRing
from services.common.errors import RegistryError
from services.common.health import grpc_serving
from services.common.internal_auth import authenticated_channel
from services.gen.wharf.auth.v1 import auth_pb2 as pb
from services.gen.wharf.auth.v1 import auth_pb2_grpc as pb_grpc
from services.stack.processes import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIMIT = 5
PASSWORD = "right-password-1"
ADMIN_PASSWORD = "admin-password-1"


@pytest.fixture()
def store(redis_client: redis.Redis) -> AccountStore:
    # bcrypt cost 8 (~20 ms): long enough for concurrent checks to overlap, as they do in production.
    accounts = AccountStore(redis_client, bcrypt_rounds=8, failure_limit=LIMIT, failure_window=120)
    accounts.create("victim", PASSWORD)
    accounts.create("root", ADMIN_PASSWORD, admin=True)
    return accounts


def settings_for(redis_url: str, tmp_path: pathlib.Path, **overrides: Any) -> AuthSettings:
    token_file = tmp_path / "internal-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(48))
    values: dict[str, Any] = {"redis_url": redis_url, "keys_dir": tmp_path / "keys", "bcrypt_rounds": 4,
                              "login_failures": LIMIT, "login_window": 120, "key_publish_delay": 0,
                              "internal_token_file": str(token_file), "workers": 8, **overrides}
    return AuthSettings(**values)


@pytest.fixture()
def servicer(store: AccountStore, redis_url: str, tmp_path: pathlib.Path) -> AuthServicer:
    settings = settings_for(redis_url, tmp_path)
    return AuthServicer(settings, store, KeyRing(settings.keys_dir, settings.token_ttl))


class FakeContext:
    """What the servicer reads from a gRPC context: the peer and the call metadata."""

    def __init__(self, peer: str, user: str = "", password: str = "") -> None:
        self._peer = peer
        self._metadata = [("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())]

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata


def attempt(store: AccountStore, password: str, address: str = "203.0.113.7") -> str:
    try:
        Identities.builtin(store).authenticate("victim", password, address)
    except RegistryError as err:
        if err.code == "TOOMANYREQUESTS":
            assert int(err.detail["retry_after"]) >= 1 and int(err.headers["Retry-After"]) >= 1
        return err.code
    return "OK"


def all_at_once(count: int, fn: Any) -> list[str]:
    barrier = threading.Barrier(count)

    def run(i: int) -> str:
        barrier.wait()
        return str(fn(i))

    with futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


# -- finding 1: concurrent guesses cannot overrun the lockout --------------------------------

def test_concurrent_wrong_passwords_check_at_most_the_limit(store: AccountStore, redis_client: redis.Redis) -> None:
    """24 guesses at once used to give 19 x 401: all read "0 failures" before any was counted."""
    outcomes = all_at_once(24, lambda i: attempt(store, f"wrong-password-{i}"))
    assert 1 <= outcomes.count("UNAUTHORIZED") <= LIMIT, outcomes
    assert outcomes.count("UNAUTHORIZED") + outcomes.count("TOOMANYREQUESTS") == 24, outcomes
    assert int(redis_client.get(keys.failures("victim", "203.0.113.7")) or 0) <= LIMIT
    assert attempt(store, PASSWORD) == "TOOMANYREQUESTS"  # locked, even for the right password


def test_concurrent_right_passwords_are_not_locked_out(store: AccountStore) -> None:
    """Ten CI jobs logging in as one robot from one address at once all get in: a request that
    finds the limit taken only by checks in flight waits for them rather than failing."""
    assert all_at_once(16, lambda i: attempt(store, PASSWORD)) == ["OK"] * 16


# -- identical logins at once: one password check, remembered briefly (services/auth/verified.py) --

def _counting_checks(store: AccountStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    real = store.check_password

    def check_password(name: str, password: str) -> bool | None:
        checked.append(password)
        return real(name, password)
    monkeypatch.setattr(store, "check_password", check_password)
    return checked


def test_identical_logins_at_once_share_one_password_check(store: AccountStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A node pool or a CI fleet sends one robot's password with every token request: 100 at once
    took 10 s, and 22 were refused (429 after the throttle's wait, 503 past the gateway's deadline)."""
    checked = _counting_checks(store, monkeypatch)
    identities = Identities.builtin(store)

    def login(_: int) -> str:
        return identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name
    assert all_at_once(24, login) == ["victim"] * 24
    assert checked == [PASSWORD]


def test_a_remembered_login_ends_with_its_password_or_account(store: AccountStore,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    identities = Identities.builtin(store)
    checked = _counting_checks(store, monkeypatch)
    assert identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name == "victim"
    assert identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name == "victim"
    assert len(checked) == 1
    store.set_password("victim", "new-password-2")
    with pytest.raises(RegistryError) as raised:
        identities.authenticate("victim", PASSWORD, "203.0.113.7")
    assert raised.value.code == "UNAUTHORIZED"
    assert identities.authenticate("victim", "new-password-2", "203.0.113.7")[0].name == "victim"
    store.delete("victim")
    with pytest.raises(RegistryError) as raised:
        identities.authenticate("victim", "new-password-2", "203.0.113.7")
    assert raised.value.code == "UNAUTHORIZED"


def test_a_remembered_login_stays_locked_out_and_guesses_are_all_checked(
        store: AccountStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    identities = Identities.builtin(store)
    assert identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name == "victim"
    checked = _counting_checks(store, monkeypatch)
    for _ in range(LIMIT):  # the same wrong guess again and again: each one checked and counted
        with pytest.raises(RegistryError) as raised:
            identities.authenticate("victim", "wrong-password", "203.0.113.7")
        assert raised.value.code == "UNAUTHORIZED"
    assert checked == ["wrong-password"] * LIMIT
    assert int(redis_client.get(keys.failures("victim", "203.0.113.7")) or 0) == LIMIT
    with pytest.raises(RegistryError) as raised:
        identities.authenticate("victim", PASSWORD, "203.0.113.7")  # remembered, and locked all the same
    assert raised.value.code == "TOOMANYREQUESTS" and int(raised.value.headers["Retry-After"]) >= 1
    assert identities.authenticate("victim", PASSWORD, "198.51.100.1")[0].name == "victim"  # per address


def test_a_remembered_login_resets_the_count_as_a_checked_one_does(
        store: AccountStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typos between two logins within the remembered minute are cleared by the second, as a
    checked right password clears them; a lone remembered login writes nothing."""
    identities = Identities.builtin(store)
    assert identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name == "victim"
    for _ in range(LIMIT - 1):
        with pytest.raises(RegistryError):
            identities.authenticate("victim", "wrong-password", "203.0.113.7")
    checked = _counting_checks(store, monkeypatch)
    assert identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name == "victim"  # remembered
    assert checked == []
    assert redis_client.get(keys.failures("victim", "203.0.113.7")) is None
    for _ in range(LIMIT - 1):  # as many typos again, and still not locked
        with pytest.raises(RegistryError) as raised:
            identities.authenticate("victim", "wrong-password", "203.0.113.7")
        assert raised.value.code == "UNAUTHORIZED"
    assert identities.authenticate("victim", PASSWORD, "203.0.113.7")[0].name == "victim"


def test_a_right_password_resets_the_count(store: AccountStore) -> None:
    for _ in range(LIMIT - 1):
        assert attempt(store, "wrong-password") == "UNAUTHORIZED"
    assert attempt(store, PASSWORD) == "OK"
    for _ in range(LIMIT):
        assert attempt(store, "wrong-password") == "UNAUTHORIZED"
    assert attempt(store, "wrong-password") == "TOOMANYREQUESTS"
    assert attempt(store, "wrong-password", address="198.51.100.1") == "UNAUTHORIZED"  # per address


def test_account_names_with_a_final_newline_are_not_accounts(store: AccountStore) -> None:
    with pytest.raises(RegistryError) as raised:
        Identities.builtin(store).authenticate("victim\n", PASSWORD, "203.0.113.7")
    assert raised.value.code == "UNAUTHORIZED"
    with pytest.raises(RegistryError):
        store.create("victim2\n", PASSWORD)


# -- finding 2: the admin API's lockout survives reconnecting --------------------------------

@pytest.fixture()
def admin_server(redis_url: str, tmp_path: pathlib.Path, redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """The auth service as a process (as the stack runs it), with these settings."""
    address = f"127.0.0.1:{free_port()}"
    settings = settings_for(redis_url, tmp_path, admin_password=ADMIN_PASSWORD, listen=address)
    env = {**os.environ, **{field.metadata["env"]: str(getattr(settings, field.name))
                            for field in dataclasses.fields(settings) if "env" in field.metadata}}
    with open(tmp_path / "auth.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.auth"], env=env, stdout=log, stderr=log,
                                   cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not grpc_serving(address):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "auth.log").read_text()
            time.sleep(0.1)
        yield address, pathlib.Path(settings.internal_token_file).read_text()
    finally:
        process.terminate()
        process.wait(20)


def admin_call(target: tuple[str, str], password: str) -> grpc.StatusCode:
    """ListAccounts as admin over a brand-new connection (a new source port every time)."""
    address, token = target
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AuthStub(authenticated_channel(channel, token))
        try:
            stub.ListAccounts(pb.ListAccountsRequest(), timeout=10, metadata=[("authorization", f"Basic {basic}")])
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_the_admin_lockout_survives_a_new_connection_per_attempt(admin_server: tuple[str, str]) -> None:
    codes = [admin_call(admin_server, f"guess-{i}") for i in range(LIMIT + 3)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * LIMIT + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert admin_call(admin_server, ADMIN_PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_admin_api_counts_an_account_over_all_addresses(servicer: AuthServicer) -> None:
    """An attacker who can pick source addresses (any IPv6 host) is still stopped."""
    account_limit = LIMIT * ADMIN_ACCOUNT_FAILURE_FACTOR
    codes = []
    for i in range(account_limit + 2):
        context = FakeContext(f"ipv4:10.0.{i // 250}.{i % 250}:{40000 + i}", "root", f"guess-{i}")
        try:
            servicer.ListAccounts(pb.ListAccountsRequest(), context)  # type: ignore[arg-type]
            codes.append("OK")
        except RegistryError as err:
            codes.append(err.code)
    assert codes == ["UNAUTHORIZED"] * account_limit + ["TOOMANYREQUESTS"] * 2
    # /token is not affected: strangers on the internet must not lock the admin out of pulling.
    request = pb.IssueTokenRequest(username="root", password=ADMIN_PASSWORD, client_address="192.0.2.50")
    assert servicer.IssueToken(request, FakeContext("ipv4:127.0.0.1:1")).subject == "root"  # type: ignore[arg-type]


# -- finding 3: the scope cap counts scopes, not parameters ----------------------------------

def test_one_parameter_with_a_hundred_scopes_is_refused(servicer: AuthServicer) -> None:
    flood = " ".join(f"repository:victim/app{i}:pull,push" for i in range(100))
    with pytest.raises(RegistryError) as raised:
        servicer.IssueToken(pb.IssueTokenRequest(scopes=[flood]), FakeContext(""))  # type: ignore[arg-type]
    assert raised.value.code == "REQUEST_INVALID"
    fine = " ".join(f"repository:victim/app{i}:pull" for i in range(32))
    issued = servicer.IssueToken(pb.IssueTokenRequest(scopes=[fine]), FakeContext(""))  # type: ignore[arg-type]
    assert len(issued.token) < 6000


# -- findings 4 and 6: the catalog filter ----------------------------------------------------

def test_a_deleted_account_sees_what_anonymous_sees(servicer: AuthServicer, store: AccountStore) -> None:
    store.set_public("pub/*", True)
    names = ["victim/app", "pub/app", "pub/app/deep", "other/app"]
    store.delete("victim")
    for account in ["victim", "never-existed", "Not A Name", "x" * 500]:
        request = pb.FilterRepositoriesRequest(account=account, repositories=names)
        assert list(servicer.FilterRepositories(request, FakeContext("")).repositories) == ["pub/app"]  # type: ignore[arg-type]


def test_the_catalog_filter_drops_non_canonical_names(servicer: AuthServicer) -> None:
    names = ["victim/app", "victim/../root/secret", "victim/x;root/secret", "victim/*", "victim/app\n"]
    request = pb.FilterRepositoriesRequest(account="victim", repositories=names)
    assert list(servicer.FilterRepositories(request, FakeContext("")).repositories) == ["victim/app"]  # type: ignore[arg-type]


# -- finding 5: patterns are validated when an admin stores them -----------------------------

def test_grants_and_public_patterns_are_validated(store: AccountStore, redis_client: redis.Redis) -> None:
    for bad in ["", "team/[ab]", "team**", "Team/*", "team/", "a" * 256]:
        with pytest.raises(RegistryError) as raised:
            store.grant("victim", bad, ["pull"])
        assert raised.value.code == "REQUEST_INVALID"
        with pytest.raises(RegistryError):
            store.set_public(bad, True)
    assert dict(store.grant("victim", "team/**", ["pull"]).grants)["team/**"] == {"pull"}
    # A pattern stored before validation existed can still be removed.
    redis_client.hset(keys.grants("victim"), "team/[ab]", "pull")
    redis_client.sadd(keys.PUBLIC, "team/[ab]")
    assert "team/[ab]" not in dict(store.revoke("victim", "team/[ab]").grants)
    store.set_public("team/[ab]", False)
    assert store.public_patterns() == []


# -- finding 7: failed logins are logged with who and from where -----------------------------

def _login_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.fields, msg=r.getMessage()) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "wharf.auth" and r.levelno >= logging.WARNING and hasattr(r, "fields")]


def test_failed_logins_and_lockouts_are_logged_without_the_password(servicer: AuthServicer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wharf.auth")
    for i in range(LIMIT + 1):
        request = pb.IssueTokenRequest(username="victim", password=f"secret-guess-{i}", client_address="192.0.2.7")
        with pytest.raises(RegistryError):
            servicer.IssueToken(request, FakeContext(""))  # type: ignore[arg-type]
    with pytest.raises(RegistryError):
        servicer.ListAccounts(pb.ListAccountsRequest(),
                              FakeContext("ipv6:%5B2001:db8::5%5D:5555", "root", "secret-guess-admin"))  # type: ignore[arg-type]
    evil = "victim\n" + "{\"msg\": \"forged\"}" + "x" * 5000
    with pytest.raises(RegistryError):
        servicer.IssueToken(pb.IssueTokenRequest(username=evil, password="secret-guess-x",  # type: ignore[arg-type]
                                                 client_address="192.0.2.8\r\n"), FakeContext(""))
    records = _login_records(caplog)
    failed = [r for r in records if r["msg"] == "failed login"]
    locked = [r for r in records if r["msg"] == "login locked out"]
    assert len(locked) == 1 and locked[0]["account"] == "victim" and locked[0]["address"] == "192.0.2.7"
    assert locked[0]["retry_after"] >= 1
    assert {(r["account"], r["address"], r["via"]) for r in failed[:LIMIT]} == {("victim", "192.0.2.7", "token")}
    assert ("root", "2001:db8::5", "admin") in {(r["account"], r["address"], r["via"]) for r in failed}
    forged = failed[-1]
    assert "\n" not in forged["account"] and len(forged["account"]) < 100 and forged["account"].startswith("victim\\n")
    assert "\r" not in forged["address"]
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "secret-guess" not in text
