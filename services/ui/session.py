"""The web UI's session, CSRF protection and security headers.

The session is one cookie, ``wharf_ui``: HttpOnly, SameSite=Strict, Path=/, and Secure whenever
the page was served over HTTPS (WHARF_TLS_CERT_FILE, or X-Forwarded-Proto from a trusted proxy,
which gunicorn applies to the request's scheme). It holds a random session id and, once signed
in, the account's registry token and refresh token, as the auth service issued them to the
login form (the same IssueToken call ``/token`` makes): the gateway keeps no session state, and
nothing in the cookie is believed without the auth service or the token's signature — whoever
the request speaks for is the verified token's subject. The access token is renewed from the
refresh token when it expires; the session ends when the refresh token does (or at logout).

Every POST carries a CSRF token derived from the session id (which only the HttpOnly cookie
holds), compared in constant time, and must come from this origin (Origin, else Referer);
anything else is a 403 that changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
from urllib.parse import urlsplit

from flask import Request, Response

COOKIE = "wharf_ui"
# What a cookie may weigh before it is ignored (two tokens of a few hundred bytes, and an id).
_COOKIE_MAX = 3800
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclasses.dataclass(frozen=True)
class Session:
    sid: str
    token: str = ""      # the registry token (signed in), "" otherwise
    refresh: str = ""    # the refresh token it is renewed with

    @property
    def csrf(self) -> str:
        return hashlib.sha256(b"wharf-ui-csrf:" + self.sid.encode()).hexdigest()

    def encode(self) -> str:
        raw = json.dumps({"sid": self.sid, "t": self.token, "r": self.refresh}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def new_session(token: str = "", refresh: str = "") -> Session:
    return Session(secrets.token_urlsafe(24), token, refresh)


_PRINTABLE = re.compile(r"[\x21-\x7e]*")


def read_session(request: Request) -> Session | None:
    """The request's session, or None when it has none (or a malformed one)."""
    value = request.cookies.get(COOKIE, "")
    if not value or len(value) > _COOKIE_MAX:
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k, ""), str) for k in ("sid", "t", "r")):
        return None
    # Ids and tokens are printable ASCII: anything else (a lone surrogate JSON allows, which no
    # encoder takes) made every page a 500 for whoever holds the cookie.
    if not all(_PRINTABLE.fullmatch(fields.get(k, "")) for k in ("sid", "t", "r")):
        return None
    if len(fields.get("sid", "")) < 16:
        return None
    return Session(fields["sid"], fields.get("t", ""), fields.get("r", ""))


def set_cookie(response: Response, session: Session, secure: bool) -> None:
    response.set_cookie(COOKIE, session.encode(), path="/", httponly=True, samesite="Strict", secure=secure)


def clear_cookie(response: Response, secure: bool) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=secure)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def same_origin(request: Request, public_url: str) -> bool:
    """Whether a POST comes from a page of this registry: its Origin (or, without one, its Referer)
    is the origin the request was sent to, or WHARF_PUBLIC_URL's."""
    allowed = {f"{request.scheme}://{request.host}".lower()}
    if public_url:
        allowed.add(_origin_of(public_url))
    origin = request.headers.get("Origin", "")
    if origin:
        return origin.lower() in allowed
    referer = request.headers.get("Referer", "")
    return bool(referer) and _origin_of(referer) in allowed


def csrf_ok(session: Session | None, sent: str) -> bool:
    expected = session.csrf if session is not None else ""
    return bool(expected) and hmac.compare_digest(expected.encode(), sent.encode())


def secure_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
