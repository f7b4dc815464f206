"""The identity chain against a real Redis, with LDAP backends pointed at directories that do not
answer: a silent server costs a bounded time and a bounded number of threads, built-in accounts
keep logging in meanwhile, and a broken third-party backend fails closed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from typing import Any

import pytest
import redis

from services.auth.accounts import AccountStore
from services.auth.identity import (
    Accounts,
    Identities,
    Identity,
    IdentityBackend,
    IdentityContext,
    IdentityUnavailable,
)
from services.auth.ldap import LdapBackend, parse_options
from services.common.errors import RegistryError


def _ldap(url: str, **extra: Any) -> LdapBackend:
    return LdapBackend(parse_options({"url": url, "user_base": "ou=people,dc=x", "timeout": 1, **extra}))


@pytest.fixture()
def store(redis_client: redis.Redis) -> AccountStore:
    accounts = AccountStore(redis_client, bcrypt_rounds=4, failure_limit=5, failure_window=60)
    accounts.create("robot-one", "robot-password-1", kind="robot")
    return accounts


def _outcome(call: Any) -> str:
    try:
        call()
    except IdentityUnavailable:
        return "unavailable"
    except RegistryError as err:
        return err.code
    return "ok"


def test_a_silent_directory_costs_a_bounded_time_and_few_threads(silent_directory: str) -> None:
    backend = _ldap(silent_directory, max_concurrent=2)
    in_flight, most = [0], [0]
    lock = threading.Lock()
    original = backend._bound

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            with original(*args, **kwargs) as conn:
                yield conn
        finally:
            with lock:
                in_flight[0] -= 1

    backend._bound = contextlib.contextmanager(counted)  # type: ignore[method-assign]
    started = time.monotonic()
    with futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda i: _outcome(lambda: backend.authenticate(f"user{i}", "pass-word-1")),
                                 range(8)))
    elapsed = time.monotonic() - started
    assert outcomes == ["unavailable"] * 8
    assert most[0] <= 2  # the directory held at most max_concurrent threads
    assert elapsed < 5, elapsed


def test_built_in_accounts_log_in_while_the_directory_hangs(store: AccountStore, silent_directory: str,
                                                            redis_client: redis.Redis) -> None:
    identities = Identities(store, [("accounts", Accounts(store)), ("ldap", _ldap(silent_directory))])
    hung = futures.ThreadPoolExecutor(4)
    pending = [hung.submit(_outcome, lambda: identities.authenticate("someone", "pass-word-1", "198.51.100.9"))
               for _ in range(4)]
    started = time.monotonic()
    principal, backend = identities.authenticate("robot-one", "robot-password-1", "198.51.100.9")
    assert (principal.name, principal.kind, backend) == ("robot-one", "robot", "accounts")
    assert time.monotonic() - started < 1.0
    assert [p.result(10) for p in pending] == ["UNAVAILABLE"] * 4
    hung.shutdown()
    # The outage was not counted against "someone" as failed guesses.
    assert not redis_client.keys("wharf-auth:failures:someone:*")
    # A wrong password for a built-in account never asks the directory (the name is taken).
    started = time.monotonic()
    assert _outcome(lambda: identities.authenticate("robot-one", "wrong-password", "198.51.100.9")) == "UNAUTHORIZED"
    assert time.monotonic() - started < 0.5


class _Broken(IdentityBackend):
    wharf_interface = 1

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: IdentityContext) -> _Broken:
        return cls()

    def authenticate(self, name: str, password: str) -> Identity | None:
        raise KeyError("a bug in a third party's backend")

    def lookup(self, name: str) -> Identity | None:
        return None


class _Impostor(_Broken):
    def authenticate(self, name: str, password: str) -> Identity | None:
        return Identity("admin", admin=True)


def test_a_broken_or_lying_backend_fails_closed(store: AccountStore) -> None:
    broken = Identities(store, [("accounts", Accounts(store)), ("broken", _Broken())])
    assert _outcome(lambda: broken.authenticate("nobody", "pass-word-1", "198.51.100.9")) == "UNAVAILABLE"
    liar = Identities(store, [("impostor", _Impostor())])
    assert _outcome(lambda: liar.authenticate("mallory", "pass-word-1", "198.51.100.9")) == "UNAUTHORIZED"


def test_ldap_options_are_checked_with_every_problem_named(tmp_path: Any) -> None:
    with pytest.raises(ValueError) as raised:
        parse_options({"url": "ldap://x", "user_base": "ou=p", "user_filter": "objectClass=person",
                       "group_filter": "(a=b))(", "timeout": 0, "bind_dn": "cn=x", "colour": "blue"})
    message = str(raised.value)
    for part in ("unknown options colour", "user_filter: an LDAP filter", "group_filter: unbalanced",
                 "timeout:", "bind_dn and bind_password_file go together"):
        assert part in message, message
    secret = tmp_path / "bind"
    secret.write_text("s3cret\n")
    options = parse_options({"url": ["ldaps://a", "ldap://b"], "user_base": "ou=p", "bind_dn": "cn=x",
                             "bind_password_file": str(secret), "member_attribute": "memberUid",
                             "member_value": "name"})
    assert options.urls == ("ldaps://a", "ldap://b") and options.bind_password == "s3cret"
    assert "s3cret" not in repr(options)
