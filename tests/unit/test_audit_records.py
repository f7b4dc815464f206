"""What becomes an audit record, and how (no sockets): the gateway's choice of action per request,
the logins it counts, the error code it reads from an answer; the metadata service's stored
fields; `wharf-admin audit`'s times and lines."""

from __future__ import annotations

import base64
import datetime
import time
from typing import Any

import click
import pytest
from flask import Flask, Response, g
from werkzeug.datastructures import MultiDict

from services.api.audit import WriteAudit, error_code, login_account, ui_form_action, write_action
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.maintenance.audit_cli import parse_time, record_json, record_text
from services.metadata.audit import ACCEPT_PAST_MS, record_of, stream_fields

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("method", "endpoint", "params", "args", "status", "expected"), [
    ("POST", "uploads", {"name": "a/b"}, {}, 202, None),                       # a start: not yet a write
    ("POST", "uploads", {"name": "a/b"}, {}, 403, ("upload", "", "start")),    # ... unless refused
    ("POST", "uploads", {"name": "a/b"}, {"digest": DIGEST}, 201, ("upload", DIGEST, "")),  # monolithic
    ("POST", "uploads", {"name": "a/b"}, {"mount": DIGEST, "from": "c/d"}, 201, ("mount", DIGEST, "from c/d")),
    ("POST", "uploads", {"name": "a/b"}, {"mount": DIGEST, "from": "c/d"}, 202, None),  # became an upload
    ("PATCH", "upload", {"name": "a/b", "upload_id": "u"}, {}, 202, None),
    ("PATCH", "upload", {"name": "a/b", "upload_id": "u"}, {}, 416, ("upload", "", "chunk")),
    ("PUT", "upload", {"name": "a/b", "upload_id": "u"}, {"digest": DIGEST}, 201, ("upload", DIGEST, "")),
    ("PUT", "upload", {"name": "a/b", "upload_id": "u"}, {"digest": DIGEST}, 400, ("upload", DIGEST, "")),
    ("DELETE", "upload", {"name": "a/b", "upload_id": "u"}, {}, 204, ("cancel-upload", "", "")),
    ("GET", "upload", {"name": "a/b", "upload_id": "u"}, {}, 204, None),
    ("DELETE", "blob", {"name": "a/b", "digest": DIGEST}, {}, 202, ("delete-blob", DIGEST, "")),
    ("GET", "blob", {"name": "a/b", "digest": DIGEST}, {}, 200, None),
    ("HEAD", "blob", {"name": "a/b", "digest": DIGEST}, {}, 403, ("pull", DIGEST, "")),  # a denied look
    ("GET", "blob", {"name": "a/b", "digest": DIGEST}, {}, 401, None),                  # a challenge: no
    ("PUT", "manifest", {"name": "a/b", "reference": "v1"}, {}, 201, ("push", "v1", "")),
    ("PUT", "manifest", {"name": "a/b", "reference": "v1"}, {}, 400, ("push", "v1", "")),
    ("DELETE", "manifest", {"name": "a/b", "reference": "v1"}, {}, 202, ("untag", "v1", "")),
    ("DELETE", "manifest", {"name": "a/b", "reference": DIGEST}, {}, 202, ("delete", DIGEST, "")),
    ("GET", "manifest", {"name": "a/b", "reference": "v1"}, {}, 200, None),
    ("GET", "catalog", {}, {}, 403, None),
])
def test_write_actions(method: str, endpoint: str, params: dict[str, str], args: dict[str, str], status: int,
                       expected: tuple[str, str, str] | None) -> None:
    assert write_action(method, endpoint, params, MultiDict(args), status) == expected


def test_values_sent_are_cut() -> None:
    action = write_action("PUT", "manifest", {"name": "a/b", "reference": "x" * 5000}, MultiDict(), 400)
    assert action is not None and len(action[1]) == 1024


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("method", "headers", "form", "expected"), [
    ("GET", {}, None, None),                                         # anonymous: no login
    ("GET", {"Authorization": _basic("alice", "pw")}, None, "alice"),
    ("GET", {"Authorization": "Basic !!!"}, None, ""),               # unreadable credentials: a failed login
    ("GET", {"Authorization": "Bearer x"}, None, ""),
    ("POST", {}, {"grant_type": "password", "username": "bob", "password": "pw"}, "bob"),
    ("POST", {}, {"grant_type": "refresh_token", "refresh_token": "t"}, None),  # a redemption: no login
    ("POST", {}, {"grant_type": "nonsense"}, None),
])
def test_logins(method: str, headers: dict[str, str], form: dict[str, str] | None, expected: str | None) -> None:
    app = Flask("t")
    with app.test_request_context("/token", method=method, headers=headers, data=form):
        assert login_account() == expected


def test_the_error_code_comes_from_the_body_or_for_a_head_the_status() -> None:
    app = Flask("t")
    body = b'{"errors": [{"code": "MANIFEST_INVALID", "message": "bad"}]}'
    with app.test_request_context("/v2/a/manifests/v1", method="PUT"):
        assert error_code(Response(body, status=400, content_type="application/json")) == "MANIFEST_INVALID"
        assert error_code(Response(b"not json", status=400)) == "ERROR"
        assert error_code(Response(b"", status=403)) == "DENIED"
    with app.test_request_context("/v2/a/blobs/x", method="HEAD"):
        assert error_code(Response(b"", status=403)) == "DENIED"
        assert error_code(Response(b"", status=401)) == "UNAUTHORIZED"
        assert error_code(Response(b"", status=404)) == "ERROR"


@pytest.mark.parametrize(("method", "endpoint", "form", "expected"), [
    ("POST", "ui_delete", {"name": "a/b", "ref": "v1", "csrf": "x"}, ("untag", "a/b", "v1")),
    ("POST", "ui_delete", {"name": "a/b", "ref": DIGEST, "csrf": "x"}, ("delete", "a/b", DIGEST)),
    ("POST", "ui_delete", {}, ("untag", "", "")),          # a forged form: recorded, with what it said
    ("POST", "ui_login", {"username": "carol"}, ("login", "", "")),
    ("POST", "ui_logout", {"csrf": "x"}, None),
    ("GET", "ui_delete", {"name": "a/b", "ref": "v1"}, None),   # the confirmation page changes nothing
    ("POST", "uploads", {"digest": DIGEST}, None),              # an API route's body is never read here
])
def test_web_ui_forms(method: str, endpoint: str, form: dict[str, str], expected: tuple[str, str, str] | None) -> None:
    app = Flask("t")
    with app.test_request_context("/ui/x", method=method, data=form if method == "POST" else None):
        assert ui_form_action(method, endpoint) == expected


class _Authorizer:
    def subject(self, authorization: str) -> str:
        return ""


def test_a_web_ui_delete_is_recorded_like_the_apis() -> None:
    app = Flask("t")
    audit = WriteAudit(None, _Authorizer())  # type: ignore[arg-type]
    with app.test_request_context("/ui/delete", method="POST", data={"name": "a/b", "ref": "v1", "csrf": "x"},
                                  headers={"User-Agent": "browser"}):
        g.client_address, g.request_id = "10.0.0.9", "r1"
        g.claims = type("Claims", (), {"subject": "carol"})()
        record = audit.describe(Response(b"", status=303))
        assert record is not None
        assert (record.action, record.repository, record.reference, record.account, record.address, record.result,
                record.status, record.detail, record.via) == ("untag", "a/b", "v1", "carol", "10.0.0.9", "ok", 303,
                                                              "web UI", "gateway")
        g.error_code = "DENIED"  # the UI's error pages are HTML: the code comes from g
        refused = audit.describe(Response(b"<html>", status=403))
        assert refused is not None and refused.result == "DENIED"
    with app.test_request_context("/ui/login", method="POST", data={"username": "mallory", "password": "x"}):
        g.error_code = "UNAUTHORIZED"
        login = audit.describe(Response(b"<html>", status=403))
        assert login is not None and (login.action, login.account, login.result) == ("login", "mallory", "UNAUTHORIZED")


def test_stored_fields_are_all_present_bounded_and_printable() -> None:
    now = int(time.time() * 1000)
    fields = stream_fields(gpb.AuditRecord(account="x\r\n" * 200, user_agent="\x00é", action="push",
                                           at_ms=now - ACCEPT_PAST_MS - 1, status=-1), now)
    assert fields["account"] == ("x??" * 200)[:256] and fields["agent"] == "??"
    assert fields["at"] == now and fields["status"] == 0 and fields["kind"] == ""
    assert set(fields) == {"at", "account", "kind", "address", "agent", "action", "repository", "reference",
                           "result", "status", "detail", "request", "via"}
    back = record_of(b"1-0", {k.encode(): str(v).encode() for k, v in fields.items()})
    assert back.id == "1-0" and back.at_ms == now and back.account == fields["account"]
    # A damaged or foreign entry reads as what it can.
    assert record_of("2-0", {"at": "x", "status": "²"}).at_ms == 0


def test_times_are_durations_ago_or_iso() -> None:
    now = 1_700_000_000.0
    assert parse_time("2h", now) == int((now - 7200) * 1000)
    assert parse_time("7d", now) == int((now - 7 * 86400) * 1000)
    utc = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.UTC)
    assert parse_time("2024-05-01T10:00:00Z") == int(utc.timestamp() * 1000)
    assert parse_time("2024-05-01T10:00") == int(utc.timestamp() * 1000)  # UTC without an offset
    assert parse_time("2024-05-01T12:00+02:00") == int(utc.timestamp() * 1000)
    with pytest.raises(click.BadParameter):
        parse_time("yesterday")


def test_lines_and_json() -> None:
    record: Any = gpb.AuditRecord(id="5-0", at_ms=1_714_557_600_123, account="alice", address="10.0.0.1",
                                  action="push", repository="team/app", reference="v1", result="ok", status=201,
                                  detail=f"digest {DIGEST}", via="gateway")
    assert record_text(record) == (f"2024-05-01T10:00:00.123Z  alice (10.0.0.1)  push  team/app:v1  ok 201  "
                                   f"[digest {DIGEST}]  via gateway")
    anonymous = gpb.AuditRecord(at_ms=0, action="delete", repository="a/b", reference=DIGEST, result="DENIED")
    assert "anonymous (-)  delete  a/b@sha256:" in record_text(anonymous)
    exported = record_json(record)
    assert exported["at"] == "2024-05-01T10:00:00.123Z" and exported["user_agent"] == "" and exported["id"] == "5-0"
