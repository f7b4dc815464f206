"""A hostile review of logins (2026-12-03): a flood of logins for names the built-in accounts do not
know, while the directory hangs. Each such login is a directory login; those waiting for a turn
held an auth-service login thread each, for up to the directory's timeout, however many there were.
On a running stack (LDAP timeout 5 s, a directory that accepts connections and never answers, 24
clients logging in with made-up names) a built-in account's login took 7.5 s instead of 0.27 s."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import redis

from services.auth.accounts import AccountStore
from services.auth.identity import Accounts, Identities
from services.auth.ldap import LdapBackend, parse_options
from services.common.errors import RegistryError

THREADS = 16  # the auth service's login pool (WHARF_AUTH_WORKERS' default)


def test_a_flood_of_directory_logins_leaves_login_threads_for_built_in_accounts(
        redis_client: redis.Redis, silent_directory: str) -> None:
    store = AccountStore(redis_client, bcrypt_rounds=4, failure_limit=5, failure_window=60)
    store.create("robot-one", "robot-password-1", kind="robot")
    ldap = LdapBackend(parse_options({"url": silent_directory, "user_base": "ou=people,dc=x", "timeout": 2,
                                      "max_concurrent": 2}))
    identities = Identities(store, [("accounts", Accounts(store)), ("ldap", ldap)])
    held = [0]
    lock = threading.Lock()

    def flood(i: int) -> str:
        with lock:
            held[0] += 1
        try:
            identities.authenticate(f"someone{i}", "pass-word-1", f"198.51.100.{i + 1}")
        except RegistryError as err:
            return err.code
        finally:
            with lock:
                held[0] -= 1
        return "ok"

    with futures.ThreadPoolExecutor(THREADS) as pool:
        pending = [pool.submit(flood, i) for i in range(THREADS)]
        time.sleep(0.5)
        with lock:
            still_held = held[0]
        assert [p.result(10) for p in pending] == ["UNAVAILABLE"] * THREADS
    # Two logins talk to the directory and two wait for a turn; the other twelve were refused at once
    # (before: all sixteen threads were held for up to the timeout).
    assert still_held <= 4, still_held
