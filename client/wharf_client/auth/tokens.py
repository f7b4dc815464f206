"""The bearer token flow of the Docker registry token spec, with a cache per scope.

A registry answers 401 with ``Bearer realm=...,service=...,scope=...``; the
client asks the realm for a token that grants those scopes: with a GET and HTTP
Basic credentials, or with the OAuth2 POST form when it holds a refresh
(identity) token. Tokens are cached by the scopes they grant, so a push that
needs ``pull,push`` on a repository asks once, and a later pull of the same
repository reuses that token instead of asking again.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin

import requests

from wharf_client import bodies
from wharf_client.auth.challenge import Challenge
from wharf_client.auth.credentials import Credential
from wharf_client.errors import AuthenticationError, TransportError, registry_error
from wharf_client.origins import same_or_upgraded
from wharf_client.untrusted import parse_json, printable

CLIENT_ID = "wharf"
# The spec: a token without expires_in lasts 60 seconds, and none shorter should be assumed.
DEFAULT_LIFETIME = 60
# A cached token is used at most this long, whatever the realm says (a 401 sooner drops it anyway).
MAX_LIFETIME = 24 * 3600
# Refresh a little early, so a token does not expire between lookup and use.
EARLY_REFRESH_SECONDS = 10
MAX_CACHED_TOKENS = 256
# A realm moving its form (http to https, another path) is followed this many times, on its own origin.
MAX_REALM_REDIRECTS = 5


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """``repository:a:pull`` + ``repository:a:push`` -> ``repository:a:pull,push``; sorted, one per resource."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            continue
        merged.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return [f"{kind}:{name}:{','.join(sorted(actions))}" for (kind, name), actions in sorted(merged.items())]


def _grants(scopes: Iterable[str]) -> dict[tuple[str, str], frozenset[str]]:
    found: dict[tuple[str, str], frozenset[str]] = {}
    for scope in merge_scopes(scopes):
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        found[(kind, name)] = frozenset(actions.split(","))
    return found


def covers(held: Iterable[str], wanted: Iterable[str]) -> bool:
    """True when a token asked for ``held`` scopes was also asked for everything in ``wanted``."""
    have = _grants(held)
    return all(actions <= have.get(key, frozenset()) or "*" in have.get(key, frozenset())
               for key, actions in _grants(wanted).items())


@dataclasses.dataclass(frozen=True)
class Token:
    value: str
    scopes: tuple[str, ...]
    expires_at: float


# What a cached token is filed under: (registry, realm, service, account).
CacheKey = tuple[str, str, str, str]


class TokenCache:
    """Tokens per (registry, realm, service, account), looked up by the scopes a request needs. Thread-safe.

    The registry is part of the key: a token goes back only to the registry that asked for it. A
    registry naming another one's realm and service must not be handed that one's cached token.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[CacheKey, list[Token]] = {}
        self._lock = threading.Lock()

    def find(self, key: CacheKey, scopes: Iterable[str]) -> Token | None:
        wanted = list(scopes)
        now = self._clock()
        with self._lock:
            live = [t for t in self._tokens.get(key, []) if t.expires_at > now]
            self._tokens[key] = live
            for token in reversed(live):
                if covers(token.scopes, wanted):
                    return token
        return None

    def add(self, key: CacheKey, token: Token) -> None:
        with self._lock:
            tokens = self._tokens.setdefault(key, [])
            tokens.append(token)
            del tokens[:-MAX_CACHED_TOKENS]

    def discard(self, key: CacheKey, value: str) -> None:
        with self._lock:
            self._tokens[key] = [t for t in self._tokens.get(key, []) if t.value != value]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


class TokenClient:
    """Asks token realms for tokens; one per client, shared by the registries it talks to."""

    def __init__(self, session: requests.Session, timeout: tuple[float, float] = (15.0, 60.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self.cache = TokenCache(clock)

    @staticmethod
    def cache_key(challenge: Challenge, credential: Credential, registry: str) -> CacheKey:
        account = credential.username or ("identity" if credential.identity_token else "")
        return (registry, challenge.realm, challenge.service, account)

    def token(self, challenge: Challenge, scopes: Iterable[str], credential: Credential, verify: bool = True, *,
              https_only: bool = False, registry: str) -> str:
        """A token for ``registry`` (the host it will be sent to) granting ``scopes``: cached, else fetched."""
        wanted = merge_scopes([*scopes])
        if credential.registry_token:
            return credential.registry_token
        key = self.cache_key(challenge, credential, registry)
        cached = self.cache.find(key, wanted)
        if cached:
            return cached.value
        token = self.fetch(challenge, wanted, credential, verify, https_only=https_only)
        self.cache.add(key, token)
        return token.value

    def fetch(self, challenge: Challenge, scopes: list[str], credential: Credential, verify: bool = True, *,
              https_only: bool = False) -> Token:
        """A new token from the realm: POST for refresh tokens (falling back to GET where POST is absent).

        ``https_only`` (the registry is verified HTTPS) refuses a plain-HTTP realm: the
        password would cross the network in clear text that the registry itself protects.
        """
        _check_realm(challenge, https_only)
        if credential.identity_token:
            response = self._post(challenge, scopes, {"grant_type": "refresh_token",
                                                      "refresh_token": credential.identity_token}, verify)
            if response.status_code not in (404, 405):
                return self._parse(response, scopes, "POST")
            response.close()
        params: dict[str, Any] = {"scope": scopes} if scopes else {}
        if challenge.service:
            params["service"] = challenge.service
        auth = None
        if credential.username:
            params["account"] = credential.username
            auth = (credential.username, credential.password)
        try:
            response = self._session.get(challenge.realm, params=params, auth=auth, timeout=self._timeout,
                                         verify=verify, stream=True)
        except (requests.RequestException, ValueError) as exc:  # ValueError: a realm or redirect urllib cannot parse
            raise TransportError(f"token request to {printable(challenge.realm)} failed: "
                                 f"{printable(str(exc)[:300])}") from None
        return self._parse(response, scopes, "GET")

    def password_grant(self, challenge: Challenge, credential: Credential, verify: bool = True, *,
                       https_only: bool = False) -> Token | None:
        """The OAuth2 password grant with ``access_type=offline``: what login uses to get a refresh token.

        None when the realm has no POST form (404/405), so the caller falls back to GET.
        """
        _check_realm(challenge, https_only)
        response = self._post(challenge, [], {"grant_type": "password", "username": credential.username,
                                              "password": credential.password, "access_type": "offline"}, verify)
        if response.status_code in (404, 405):
            response.close()
            return None
        return self._parse(response, [], "POST")

    def _post(self, challenge: Challenge, scopes: list[str], form: dict[str, str], verify: bool) -> requests.Response:
        """The OAuth2 form POSTed to the realm; redirects followed only on the realm's origin (or its https).

        The form carries the password or the refresh token, and requests would send it again to
        wherever a 307 or 308 points (it strips only the Authorization header): another host, or
        the plain-HTTP address an HTTPS registry's realm was refused for.
        """
        body = {**form, "client_id": CLIENT_ID, "scope": " ".join(scopes)}
        if challenge.service:
            body["service"] = challenge.service
        url, status = challenge.realm, 0
        for _ in range(MAX_REALM_REDIRECTS + 1):
            try:
                response = self._session.post(url, data=body, timeout=self._timeout, verify=verify, stream=True,
                                              allow_redirects=False)
            except (requests.RequestException, ValueError) as exc:
                raise TransportError(f"token request to {printable(challenge.realm)} failed: "
                                     f"{printable(str(exc)[:300])}") from None
            if not response.is_redirect:
                return response
            response.close()
            location = response.headers.get("Location", "")
            try:
                target = urljoin(url, location)
            except ValueError:  # not a URL ("http://[::1"): matches no origin, so it is refused below
                target = location
            status = response.status_code
            if status not in (307, 308) or not same_or_upgraded(challenge.realm, target):
                raise AuthenticationError("POST", printable(url.split("?", 1)[0]), status, [],
                                          f"the token realm redirects to {printable(target.split('?', 1)[0])}; "
                                          "refusing to send the credentials there")
            url = target
        raise AuthenticationError("POST", printable(challenge.realm.split("?", 1)[0]), status, [],
                                  "the token realm keeps redirecting")

    def _parse(self, response: requests.Response, scopes: list[str], method: str) -> Token:
        """The token in a realm's answer, its body read streamed and bounded (the realm is the registry's choice)."""
        with response:
            if response.status_code != 200:
                error = registry_error(method, response.url.split("?", 1)[0], response.status_code,
                                       bodies.bounded_text(response))
                if response.status_code in (400, 401, 403) and not isinstance(error, AuthenticationError):
                    error = AuthenticationError(error.method, error.url, error.status, error.errors, error.body_text)
                raise error
            content = bodies.read_limited(response, bodies.MAX_JSON_BODY, "the token answer")
        try:
            payload = parse_json(content)
            value = str(payload.get("token") or payload.get("access_token") or "")
            lifetime = _lifetime(payload.get("expires_in"))
        except (ValueError, TypeError, AttributeError):
            value, lifetime, payload = "", DEFAULT_LIFETIME, {}
        if not value:
            raise AuthenticationError(method, response.url.split("?", 1)[0], 200, [],
                                      "the token endpoint answered without a token")
        refresh = str(payload.get("refresh_token") or "")
        expires_at = self._clock() + max(lifetime - EARLY_REFRESH_SECONDS, 1)
        return RefreshableToken(value, tuple(scopes), expires_at, refresh)


@dataclasses.dataclass(frozen=True)
class RefreshableToken(Token):
    """A token response that may carry a refresh token (offline access)."""

    refresh_token: str = ""


def _lifetime(value: Any) -> int:
    """``expires_in`` as seconds between the spec's 60 and a day; the 60 when it is not a finite number.

    The realm chooses it: ``1e400``, ``Infinity`` or a 400-digit integer overflowed the
    expiry time (a crash), where a token is usable all the same.
    """
    if isinstance(value, bool):
        return DEFAULT_LIFETIME
    try:
        seconds = float(value or DEFAULT_LIFETIME)
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_LIFETIME
    if not math.isfinite(seconds):
        return DEFAULT_LIFETIME
    return int(min(max(seconds, DEFAULT_LIFETIME), MAX_LIFETIME))


def _check_realm(challenge: Challenge, https_only: bool) -> None:
    """A realm that can be asked at all; over HTTPS when the registry is (``https_only``)."""
    realm = challenge.realm
    if not realm.lower().startswith(("https://", "http://")):
        raise AuthenticationError("GET", printable(realm) or "(no realm)", 401, [],
                                  "the registry's Bearer challenge has no usable realm")
    if https_only and realm.lower().startswith("http://"):
        raise AuthenticationError("GET", printable(realm.split("?", 1)[0]), 401, [],
                                  "the HTTPS registry names a plain-HTTP token realm; refusing to send credentials "
                                  "there in clear text (--insecure-registry allows it)")
