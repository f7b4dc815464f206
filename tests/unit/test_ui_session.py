"""The web UI's session cookie, CSRF check and origin rules (services/ui/session.py), on hostile
input, without sockets."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import pytest
from flask import Flask, Response, request

from services.ui import session as sessions
from services.ui.session import Session

APP = Flask("t")


def _encoded(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read(cookie: str) -> Session | None:
    with APP.test_request_context("/", headers={"Cookie": f"{sessions.COOKIE}={cookie}"}):
        return sessions.read_session(request)


def test_a_session_survives_its_own_cookie() -> None:
    made = sessions.new_session("a-token", "a-refresh")
    assert _read(made.encode()) == made
    assert len(made.sid) >= 16 and made.csrf != sessions.new_session().csrf


@pytest.mark.parametrize("cookie", [
    "", "!!!not base64!!!", "%00%01", _encoded(b"not json"), _encoded(b"\xff\xfe"), _encoded([1, 2]),
    _encoded("a string"), _encoded(None), _encoded({"sid": 5}), _encoded({"sid": "s" * 20, "t": ["x"]}),
    _encoded({"sid": "s" * 20, "r": {"x": 1}}), _encoded({"sid": "short"}), _encoded({"t": "token only"}),
    _encoded({"sid": "s" * 5000}), "A" * 10_000, _encoded({"sid": "s" * 20}) + "\u2603",
    # A lone surrogate (JSON allows it, no encoder takes it): every page was a 500.
    _encoded({"sid": "\ud800" + "a" * 20}), _encoded({"sid": "a" * 20, "t": "\ud800x", "r": "y"}),
    _encoded({"sid": "a" * 20, "r": "\udfff"}), _encoded({"sid": "a" * 20 + " b"}),
])
def test_a_hostile_cookie_is_no_session(cookie: str) -> None:
    assert _read(cookie) is None


def test_unknown_fields_are_ignored_and_the_account_is_never_a_cookie_field() -> None:
    found = _read(_encoded({"sid": "s" * 20, "t": "tok", "r": "ref", "subject": "admin", "admin": True}))
    assert found == Session("s" * 20, "tok", "ref")
    assert not hasattr(found, "subject")


def test_the_csrf_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    current = sessions.new_session()
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sessions.hmac, "compare_digest", spy)
    assert sessions.csrf_ok(current, current.csrf)
    assert compared == [(current.csrf.encode(), current.csrf.encode())]
    for sent in ("", "x", current.csrf[:-1], current.csrf + "0", current.csrf.upper(), "\u00e9" * 64,
                 sessions.new_session().csrf):
        assert not sessions.csrf_ok(current, sent)
    assert not sessions.csrf_ok(None, "")  # a request that brought no session has no token to match
    assert not sessions.csrf_ok(None, current.csrf)


def _same_origin(headers: dict[str, str], public_url: str = "", base: str = "http://registry.example:5000") -> bool:
    with APP.test_request_context("/ui/delete", base_url=base, method="POST", headers=headers):
        return sessions.same_origin(request, public_url)


@pytest.mark.parametrize(("headers", "public_url", "expected"), [
    ({"Origin": "http://registry.example:5000"}, "", True),
    ({"Origin": "HTTP://Registry.Example:5000"}, "", True),                  # origins are case-insensitive
    ({"Origin": "http://evil.example"}, "", False),
    ({"Origin": "http://registry.example:5001"}, "", False),                 # another port
    ({"Origin": "https://registry.example:5000"}, "", False),                # another scheme
    ({"Origin": "http://registry.example:5000.evil.example"}, "", False),
    ({"Origin": "null"}, "", False),                                          # a sandboxed frame, a file
    ({"Origin": "http://evil.example", "Referer": "http://registry.example:5000/ui/delete"}, "", False),
    ({"Referer": "http://registry.example:5000/ui/delete?name=a"}, "", True),  # no Origin: the Referer's
    ({"Referer": "http://evil.example/http://registry.example:5000/"}, "", False),
    ({"Referer": "not a url"}, "", False),
    ({}, "", False),                                                          # neither: refused
    ({"Origin": "https://registry.example.com"}, "https://registry.example.com/", True),  # WHARF_PUBLIC_URL
    ({"Origin": "https://registry.example.com"}, "", False),
])
def test_origin_rules(headers: dict[str, str], public_url: str, expected: bool) -> None:
    assert _same_origin(headers, public_url) is expected


def test_the_cookie_is_httponly_samesite_strict_and_secure_over_tls() -> None:
    for secure in (False, True):
        response = Response()
        sessions.set_cookie(response, sessions.new_session("t"), secure)
        header = response.headers["Set-Cookie"]
        assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
        assert ("Secure" in header) is secure


def test_every_page_gets_the_security_headers() -> None:
    response = sessions.secure_headers(Response())
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "default-src 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Cache-Control"] == "no-store"
