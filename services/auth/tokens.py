"""Signing registry tokens (JWT, ES256) with the claims the token specification names."""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import time

import jwt

from services.auth.signing import ALGORITHM, KeyRing
from services.common.scopes import Scope


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str


def issue(keyring: KeyRing, issuer: str, audience: str, subject: str, access: list[Scope],
          lifetime: int, refused: list[Scope] | None = None) -> IssuedToken:
    now = int(time.time())
    key = keyring.current()
    claims = {"iss": issuer, "sub": subject, "aud": audience, "exp": now + lifetime, "nbf": now - 1, "iat": now,
              "jti": secrets.token_urlsafe(16), "access": [scope.claim() for scope in access]}
    if refused:
        # Not in the token specification; clients ignore it. The gateway reads it to tell 403 from 401.
        claims["refused"] = [scope.claim() for scope in refused]
    token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
    issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat().replace("+00:00", "Z")
    return IssuedToken(token, lifetime, issued_at)
