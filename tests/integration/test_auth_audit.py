"""The auth service's audit records against a real Redis: every admin login (let in or refused)
and every admin change, with who, from where, what and the result, never a password; and a
metadata service that cannot be reached never holds an admin call up."""

from __future__ import annotations

import logging
import pathlib
import time

import pytest
import redis

from services.auth.accounts import AccountStore
from services.auth.audit import SentAudit
from services.auth.server import AuthServicer
from services.auth.signing import KeyRing
from services.common.errors import RegistryError
from services.gen.wharf.auth.v1 import auth_pb2 as pb
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from tests.security.test_auth_service import ADMIN_PASSWORD, PASSWORD, FakeContext, settings_for
from tests.security.test_auth_service import store as store  # the fixture, re-exported for pytest

PEER = "ipv4:10.9.8.7:5555"


class Collected:
    def __init__(self) -> None:
        self.records: list[gpb.AuditRecord] = []

    def record(self, record: gpb.AuditRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        return None


def test_admin_logins_and_changes_are_recorded(store: AccountStore, redis_url: str, tmp_path: pathlib.Path,
                                               redis_client: redis.Redis) -> None:
    trail = Collected()
    settings = settings_for(redis_url, tmp_path)
    servicer = AuthServicer(settings, store, KeyRing(settings.keys_dir, settings.token_ttl), audit=trail)
    admin = FakeContext(PEER, "root", ADMIN_PASSWORD)
    servicer.CreateAccount(pb.CreateAccountRequest(name="eve", password="eve-secret-99", kind="robot"), admin)
    with pytest.raises(RegistryError):
        servicer.CreateAccount(pb.CreateAccountRequest(name="eve", password="eve-secret-99"), admin)
    servicer.SetPassword(pb.SetPasswordRequest(name="eve", password="new-secret-99"), admin)
    servicer.Grant(pb.GrantRequest(name="eve", grant=pb.Grant(pattern="team/*", actions=["pull", "push"])), admin)
    servicer.Revoke(pb.RevokeRequest(name="eve", pattern="team/*"), admin)
    servicer.SetVisibility(pb.SetVisibilityRequest(pattern="pub/**", public=True), admin)
    servicer.RevokeRefreshTokens(pb.AccountRef(name="eve"), admin)
    with pytest.raises(RegistryError):
        servicer.DeleteAccount(pb.AccountRef(name="root"), admin)  # not oneself
    servicer.DeleteAccount(pb.AccountRef(name="eve"), admin)
    servicer.ListAccounts(pb.ListAccountsRequest(), admin)
    for context in (FakeContext(PEER, "root", "wrong"), FakeContext(PEER, "victim", PASSWORD)):
        with pytest.raises(RegistryError):
            servicer.ListAccounts(pb.ListAccountsRequest(), context)

    changes = [(r.action, r.reference, r.detail, r.result) for r in trail.records if r.action != "admin-login"]
    assert changes == [("account-create", "eve", "kind robot", "ok"),
                       ("account-create", "eve", "kind user", "ACCOUNT_EXISTS"),
                       ("password-set", "eve", "", "ok"),
                       ("grant", "eve", "team/* pull,push", "ok"),
                       ("revoke", "eve", "team/*", "ok"),
                       ("visibility", "pub/**", "public", "ok"),
                       ("refresh-tokens-revoke", "eve", "", "ok"),
                       ("account-delete", "root", "", "DENIED"),
                       ("account-delete", "eve", "", "ok")]
    logins = [(r.account, r.detail, r.result) for r in trail.records if r.action == "admin-login"]
    assert logins[-3:] == [("root", "ListAccounts", "ok"), ("root", "ListAccounts", "UNAUTHORIZED"),
                           ("victim", "ListAccounts", "DENIED")]
    assert len(logins) == 12
    for r in trail.records:
        assert r.address == "10.9.8.7" and r.via == "auth", r
        assert r.account_kind == ("user" if r.result == "ok" or r.action != "admin-login" else ""), r
    text = str(trail.records)
    assert "secret" not in text and ADMIN_PASSWORD not in text and "wrong" not in text


def test_an_unreachable_metadata_service_holds_nothing_up(caplog: pytest.LogCaptureFixture) -> None:
    trail = SentAudit("127.0.0.1:1", "x" * 48)
    started = time.monotonic()
    for _ in range(2000):
        trail.record(gpb.AuditRecord(action="grant", account="root"))
    assert time.monotonic() - started < 1.0
    with caplog.at_level(logging.WARNING, logger="wharf.auth"):
        trail.close()
    assert time.monotonic() - started < 15
    assert any("audit records not recorded" in r.getMessage() for r in caplog.records)
