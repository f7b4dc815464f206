"""A hostile review of tokens (2026-12-03): refresh tokens of logins that raced a password
change, or the deletion of their account, against a real Redis and the auth service's servicer."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import redis

from services.auth.accounts import AccountStore
from services.auth.policy import Principal
from services.auth.server import AuthServicer
from services.auth.signing import KeyRing
from services.common.errors import RegistryError
from services.gen.wharf.auth.v1 import auth_pb2 as pb
from tests.security.test_auth_service import PASSWORD, FakeContext, settings_for


class RacingStore(AccountStore):
    """Runs ``during`` once, right after a password check has read the stored hash and compared:
    what an admin's change does when it lands while a login's bcrypt runs (~250 ms at cost 12)."""

    during: Callable[[], None] | None = None

    def check_password(self, name: str, password: str) -> bool | None:
        matches = super().check_password(name, password)
        change, self.during = self.during, None
        if change is not None:
            change()
        return matches


@pytest.fixture()
def racing(redis_client: redis.Redis, redis_url: str, tmp_path: pathlib.Path) -> tuple[RacingStore, AuthServicer]:
    store = RacingStore(redis_client, bcrypt_rounds=4, failure_limit=5, failure_window=120)
    store.create("victim", PASSWORD)
    settings = settings_for(redis_url, tmp_path)
    return store, AuthServicer(settings, store, KeyRing(settings.keys_dir, settings.token_ttl))


def _login(servicer: AuthServicer, password: str = PASSWORD, name: str = "victim") -> str:
    issued = servicer.IssueToken(pb.IssueTokenRequest(username=name, password=password, offline=True,  # type: ignore[arg-type]
                                                      client_address="203.0.113.7"), FakeContext(""))
    assert issued.refresh_token
    return str(issued.refresh_token)


def _refresh(servicer: AuthServicer, token: str) -> str:
    """The subject a refresh token gets a token for, or the refusal's code."""
    try:
        issued = servicer.IssueToken(pb.IssueTokenRequest(refresh_token=token, offline=True),  # type: ignore[arg-type]
                                     FakeContext(""))
    except RegistryError as err:
        return err.error.code
    return str(issued.subject)


def test_a_login_that_raced_a_password_change_keeps_no_refresh_token(racing: tuple[RacingStore, AuthServicer]) -> None:
    """Before: the change revoked the refresh tokens there were, then the racing login (checked
    against the old password) stored a new one: 30 days of access for whoever knew the old password
    (one in 121 logins of a loop on a running stack kept one)."""
    store, servicer = racing
    store.during = lambda: store.set_password("victim", "new-password-2")
    stale = _login(servicer)
    assert _refresh(servicer, stale) == "UNAUTHORIZED"
    fresh = _login(servicer, "new-password-2")
    assert _refresh(servicer, fresh) == "victim"
    assert _refresh(servicer, fresh) == "victim"  # a refresh keeps working, and keeps its binding


def test_a_login_that_raced_a_delete_does_not_speak_for_the_next_account_of_that_name(
        racing: tuple[RacingStore, AuthServicer]) -> None:
    """A CI robot is rotated by deleting it and adding it again: a login racing the delete stored a
    refresh token after the delete had revoked the others, and it spoke for the new robot."""
    store, servicer = racing

    def rotate() -> None:
        store.delete("victim")
        store.create("victim", "replacement-password-3", kind="robot")

    store.during = rotate
    stale = _login(servicer)
    assert _refresh(servicer, stale) == "UNAUTHORIZED"


def test_refresh_tokens_of_logins_that_raced_nothing_still_work(racing: tuple[RacingStore, AuthServicer]) -> None:
    store, servicer = racing
    token = _login(servicer)
    assert _refresh(servicer, token) == "victim"
    remembered = _login(servicer)  # a login remembered for a minute (services/auth/verified.py) binds too
    assert _refresh(servicer, remembered) == "victim"
    store.set_password("victim", "new-password-2")
    assert _refresh(servicer, token) == "UNAUTHORIZED" and _refresh(servicer, remembered) == "UNAUTHORIZED"
    # A refresh token stored before tokens were bound (no stamp) is honoured as before.
    legacy = store.new_refresh_token("victim", 60)
    assert _refresh(servicer, legacy) == "victim"


class DeleteDuring(AccountStore):
    """Deletes the account right after a grant or a password set has checked that it exists: what
    an admin's delete does when it lands between the two (7 of 25 rounds of a grant loop racing a
    delete on a running stack)."""

    victim = ""

    def get(self, name: str) -> Principal:
        principal = super().get(name)
        if name == self.victim:
            self.victim = ""
            self.delete(name)
        return principal


@pytest.fixture()
def deleting(redis_client: redis.Redis) -> DeleteDuring:
    store = DeleteDuring(redis_client, bcrypt_rounds=4, failure_limit=5, failure_window=120)
    store.create("ci", "first-password-1", kind="robot")
    return store


def test_a_grant_racing_a_delete_is_not_inherited_by_the_next_account_of_that_name(deleting: DeleteDuring) -> None:
    deleting.victim = "ci"
    with pytest.raises(RegistryError) as raised:
        deleting.grant("ci", "secret/**", ["pull", "push", "delete"])
    assert raised.value.error.code == "ACCOUNT_UNKNOWN"
    assert deleting.create("ci", "second-password-2", kind="robot").grants == ()


def test_a_password_set_racing_a_delete_leaves_the_name_free(deleting: DeleteDuring) -> None:
    """Before: the password hash was written into the deleted account's key, and the name could be
    neither created (ACCOUNT_EXISTS) nor deleted (ACCOUNT_UNKNOWN) again."""
    deleting.victim = "ci"
    with pytest.raises(RegistryError) as raised:
        deleting.set_password("ci", "second-password-2")
    assert raised.value.error.code == "ACCOUNT_UNKNOWN"
    assert deleting.create("ci", "third-password-3", kind="robot").name == "ci"


def test_grants_left_by_an_older_version_do_not_carry_over(deleting: DeleteDuring, redis_client: redis.Redis) -> None:
    deleting.delete("ci")
    redis_client.hset("wharf-auth:grants:ci", "secret/**", "delete,pull,push")  # an orphan, as the race left
    assert deleting.create("ci", "second-password-2", kind="robot").grants == ()
