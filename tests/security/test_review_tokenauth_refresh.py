"""Refresh tokens per account are bounded (hostile review of token auth, 2026-12-03), against a real Redis.

Every `docker login` asks for a refresh token (``access_type=offline``), and a right password is
remembered for 60 s, so a login costs no bcrypt: 2,000 logins of one user through the gateway took
16 s and left 2,000 refresh tokens and 2,000 ids in the account's set, which nothing trimmed, not
even once their tokens had ended.
"""

from __future__ import annotations

import time

import pytest
import redis

from services.auth import accounts
from services.auth import redis_keys as keys
from services.auth.accounts import AccountStore
from services.common.errors import RegistryError

CAP, TRIM_TO = 20, 15


@pytest.fixture()
def store(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> AccountStore:
    monkeypatch.setattr(accounts, "MAX_REFRESH_TOKENS", CAP)
    monkeypatch.setattr(accounts, "REFRESH_TRIM_TO", TRIM_TO)
    found = AccountStore(redis_client, bcrypt_rounds=4, failure_limit=5, failure_window=60)
    found.create("ci", "ci-password-1")
    return found


def _redeems(store: AccountStore, token: str) -> bool:
    try:
        store.redeem_refresh_token(token)
    except RegistryError:
        return False
    return True


def test_an_account_holds_at_most_the_cap_and_the_oldest_go_first(store: AccountStore,
                                                                    redis_client: redis.Redis) -> None:
    issued = []
    for n in range(3 * CAP):
        issued.append(store.new_refresh_token("ci", 3600 + n))  # later tokens end later
        assert redis_client.scard(keys.refresh_of("ci")) <= CAP
    stored = sum(1 for _ in redis_client.scan_iter(keys.refresh("*")))
    assert stored <= CAP
    assert all(_redeems(store, token) for token in issued[-TRIM_TO:])
    assert not any(_redeems(store, token) for token in issued[:CAP])
    # What is left is what revoking the account's tokens ends.
    held = redis_client.scard(keys.refresh_of("ci"))
    assert store.revoke_refresh_tokens("ci") == held
    assert not any(_redeems(store, token) for token in issued)


def test_ended_tokens_are_forgotten_before_a_live_one_is_ended(store: AccountStore, redis_client: redis.Redis) -> None:
    short = [store.new_refresh_token("ci", 1) for _ in range(CAP - 2)]
    long = [store.new_refresh_token("ci", 3600) for _ in range(2)]
    time.sleep(2.1)  # the short ones end (Redis expires their hashes; their ids stay in the set)
    assert not any(_redeems(store, token) for token in short)
    later = [store.new_refresh_token("ci", 3600) for _ in range(3)]
    assert redis_client.scard(keys.refresh_of("ci")) == len(long) + len(later)
    assert all(_redeems(store, token) for token in long + later)
