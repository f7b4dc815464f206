"""Authorization in the gateway: an ``Authorizer`` with and without token auth, and the token
verification the first one does (which scopes a request needs is in the route table).

Tokens are verified locally against the auth service's public keys, fetched
over gRPC and cached per process (refreshed periodically, and early when a
token names a key id not seen yet), so no request waits on an RPC to be
authorized. Only ES256 is accepted: ``alg: none`` and HMAC-with-a-public-key
tokens fail verification.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import threading
import time

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import g, request

from services.api.clients import AuthClient
from services.api.settings import GatewaySettings
from services.common import scopes
from services.common.client_address import valid_host
from services.common.errors import DENIED, UNAUTHORIZED, RegistryError
from services.common.scopes import Scope

log = logging.getLogger("wharf.gateway.auth")
ALGORITHMS = ["ES256"]
LEEWAY_SECONDS = 30
# An unknown kid triggers a key refresh at most this often.
_MISS_REFRESH_SECONDS = 1.0


Grants = dict[tuple[str, str], frozenset[str]]


def _grants(entries: object) -> Grants:
    found: Grants = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("actions"), list):
            key = (str(entry.get("type", "")), str(entry.get("name", "")))
            found[key] = found.get(key, frozenset()) | frozenset(str(a) for a in entry["actions"])
    return found


@dataclasses.dataclass(frozen=True)
class Claims:
    subject: str
    access: Grants
    refused: Grants

    def allows(self, scope: Scope) -> bool:
        granted = self.access.get((scope.type, scope.name), frozenset())
        return "*" in granted or all(a in granted for a in scope.actions)

    def was_refused(self, scope: Scope) -> bool:
        """True when the token's request asked for a needed action and the auth service said no."""
        refused = self.refused.get((scope.type, scope.name), frozenset())
        # "*" refused: nothing at all was given (tokens signed before the auth service named each action).
        return "*" in refused or bool(refused & set(scope.actions))


class KeyCache:
    def __init__(self, auth: AuthClient, refresh_every: float) -> None:
        self._auth = auth
        self._refresh_every = refresh_every
        self._keys: dict[str, object] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            fetched = self._auth.public_keys()
        except RegistryError:
            if not self._keys:
                raise
            # Keep verifying with the keys we have; try again shortly.
            log.warning("token key refresh failed; using cached keys")
            self._fetched_at = time.monotonic() - self._refresh_every + _MISS_REFRESH_SECONDS
            return
        self._keys = {k.kid: load_pem_public_key(k.pem.encode()) for k in fetched if k.algorithm in ALGORITHMS}
        self._fetched_at = time.monotonic()

    def get(self, kid: str) -> object | None:
        if self._stale(kid):
            with self._lock:
                if self._stale(kid):  # another thread may have refreshed meanwhile
                    self._refresh()
        return self._keys.get(kid)

    def _stale(self, kid: str) -> bool:
        age = time.monotonic() - self._fetched_at
        return age > self._refresh_every or (kid not in self._keys and age > _MISS_REFRESH_SECONDS)


class TokenVerifier:
    """Verifies tokens; a token that verified once is remembered until it expires.

    A client sends the same token with every request for minutes, and an ES256
    signature check costs more than the rest of a manifest GET's authorization;
    the token string itself is the cache key, so a tampered token is a miss.
    """

    def __init__(self, settings: GatewaySettings, auth: AuthClient, cache_size: int = 4096) -> None:
        self._settings = settings
        self._keys = KeyCache(auth, settings.key_refresh)
        self._verified: collections.OrderedDict[str, tuple[float, Claims]] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify(self, token: str) -> Claims:
        now = time.time()
        with self._lock:
            cached = self._verified.get(token)
            if cached is not None and now <= cached[0]:
                self._verified.move_to_end(token)
                return cached[1]
        expires, claims = self._verify(token)
        with self._lock:
            self._verified[token] = (expires, claims)
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str) -> tuple[float, Claims]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise RegistryError(UNAUTHORIZED, "malformed token") from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") not in ALGORITHMS:
            raise RegistryError(UNAUTHORIZED, "token signed by an unknown key")
        try:
            payload = jwt.decode(token, key, algorithms=ALGORITHMS,  # type: ignore[arg-type]
                                 audience=self._settings.token_service, issuer=self._settings.token_issuer,
                                 leeway=LEEWAY_SECONDS,
                                 options={"require": ["exp", "nbf", "iat", "iss", "aud", "jti"]})
        except jwt.PyJWTError as exc:
            raise RegistryError(UNAUTHORIZED, f"invalid token: {type(exc).__name__}") from None
        claims = Claims(str(payload.get("sub") or ""), _grants(payload.get("access")), _grants(payload.get("refused")))
        # Expiry is checked again on every cache hit (with the same leeway as the signature check).
        return float(payload["exp"]) + LEEWAY_SECONDS, claims


def _challenge_scopes(needed: list[Scope], endpoint: str) -> list[Scope]:
    """What to ask for: the needed scopes, plus what the client is about to need.

    A HEAD on a blob is how pushers check for a blob before uploading it, so its
    challenge asks for push as well: clients that keep one token per repository
    (oras-py) would otherwise be stuck with a pull-only token. The auth service
    grants push only to those who have it, so nobody gains a right this way.
    A mount names a source repository, which needs pull too.
    """
    wanted = list(needed)
    if endpoint == "blob" and request.method == "HEAD" and wanted:
        wanted[0] = Scope(wanted[0].type, wanted[0].name, ("pull", "push"))
    source = request.args.get("from", "")
    if source and request.args.get("mount"):
        wanted.append(Scope(scopes.REPOSITORY, source, ("pull",)))
    return wanted


def _realm(settings: GatewaySettings) -> str:
    """Where clients fetch tokens: WHARF_PUBLIC_URL, else what the request says, believed only as far
    as the trusted-proxy rule allows (services/common/client_address.py); never an unchecked header."""
    if settings.public_url:
        return f"{settings.public_url.rstrip('/')}/token"
    # gunicorn applies X-Forwarded-Proto to the scheme only for WHARF_TRUSTED_PROXIES (forwarded_allow_ips).
    scheme = "https" if request.scheme == "https" else "http"
    host = request.headers.get("Host", "")
    if g.get("trusted_proxy"):
        forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        host = forwarded or host
    if not valid_host(host):
        host = f"{settings.host}:{settings.port}"
    return f"{scheme}://{host}/token"


def challenge(settings: GatewaySettings, needed: list[Scope], endpoint: str, error: str = "") -> RegistryError:
    parts = [f'realm="{_realm(settings)}"', f'service="{settings.token_service}"']
    wanted = _challenge_scopes(needed, endpoint)
    if wanted:
        parts.append(f'scope="{" ".join(str(s) for s in wanted)}"')
    if error:
        parts.append(f'error="{error}"')
    detail = [s.claim() for s in wanted] or None
    return RegistryError(UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer " + ",".join(parts)})


# What a refused action was, in the words of the message: "alice may not push to bob/app".
_ATTEMPTS = {"push": "push to {}", "pull": "pull from {}", "delete": "delete from {}"}


def _refusal(claims: Claims, scope: Scope) -> str:
    """Names who, the action attempted (the most a request needed and lacked) and the resource."""
    who = claims.subject or "anonymous"
    if scope.type == scopes.REGISTRY:
        return f"{who} may not list the catalog"
    granted = claims.access.get((scope.type, scope.name), frozenset())
    missing = [action for action in scope.actions if action not in granted] or list(scope.actions)
    attempted = next((a for a in ("delete", "push", "pull") if a in missing), missing[0])
    return f"{who} may not " + _ATTEMPTS.get(attempted, attempted + " {}").format(scope.name)


# Names the auth service filters in one ``Pullable`` call at most.
PULLABLE_BATCH = 10000


class Authorizer(abc.ABC):
    """Who may do what: one implementation with token auth and one without, so that nothing
    else asks whether token auth is on (the enabled/disabled pair zot uses for its features)."""

    issues_tokens: bool = False

    @abc.abstractmethod
    def authorize(self, needed: list[Scope] | None, endpoint: str) -> None:
        """Raises the ``401`` challenge or the ``403`` when the request may not go on."""

    @abc.abstractmethod
    def grants(self, authorization: str, needed: list[Scope] | None) -> bool:
        """Whether an ``Authorization`` header is enough, without raising or challenging: the
        hot-read path asks this, and a request that gets False goes the full way."""

    @abc.abstractmethod
    def pullable(self, repositories: list[str]) -> list[str]:
        """The repositories the caller of this request may pull (catalog pages, mount sources)."""

    def pullable_set(self, repositories: list[str]) -> set[str]:
        """``pullable`` of any number of names, asked in batches the auth service takes in one call."""
        visible: set[str] = set()
        for start in range(0, len(repositories), PULLABLE_BATCH):
            visible.update(self.pullable(repositories[start:start + PULLABLE_BATCH]))
        return visible

    def subject(self, authorization: str) -> str:
        """The account an ``Authorization`` header speaks for ("" for none or an invalid one): the
        actor of a pull event recorded on the hot-read path, where no request context exists."""
        return ""

    def adopt(self, token: str) -> bool:
        """Lets this request speak for the holder of a bearer token that did not come in an
        ``Authorization`` header (the web UI keeps it in its session cookie), so that ``pullable``
        filters for that account; False when the token is not valid (then nothing changes)."""
        return True


class OpenAccess(Authorizer):
    """``WHARF_AUTH=none``: everyone may do everything."""

    def authorize(self, needed: list[Scope] | None, endpoint: str) -> None:
        return None

    def grants(self, authorization: str, needed: list[Scope] | None) -> bool:
        return True

    def pullable(self, repositories: list[str]) -> list[str]:
        return repositories


class TokenAccess(Authorizer):
    """``WHARF_AUTH=token``: bearer tokens from the auth service, verified locally."""

    issues_tokens = True

    def __init__(self, settings: GatewaySettings, auth: AuthClient) -> None:
        self._settings = settings
        self._auth = auth
        self._verifier = TokenVerifier(settings, auth)

    def grants(self, authorization: str, needed: list[Scope] | None) -> bool:
        if needed is None:
            return True
        if not authorization.lower().startswith("bearer "):
            return False
        try:
            claims = self._verifier.verify(authorization[7:].strip())
        except RegistryError:
            return False
        return all(claims.allows(scope) for scope in needed)

    def subject(self, authorization: str) -> str:
        if not authorization.lower().startswith("bearer "):
            return ""
        try:
            return self._verifier.verify(authorization[7:].strip()).subject
        except RegistryError:
            return ""

    def adopt(self, token: str) -> bool:
        try:
            g.claims = self._verifier.verify(token)
        except RegistryError:
            return False
        return True

    def authorize(self, needed: list[Scope] | None, endpoint: str) -> None:
        if needed is None:
            return
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            raise challenge(self._settings, needed, endpoint)
        try:
            claims = self._verifier.verify(header[7:].strip())
        except RegistryError as err:
            if err.error is not UNAUTHORIZED:
                raise
            raise challenge(self._settings, needed, endpoint, "invalid_token") from None
        for scope in needed:
            if claims.allows(scope):
                continue
            if claims.was_refused(scope):
                # The caller asked for this right and was refused it: a new token will not help.
                raise RegistryError(DENIED, _refusal(claims, scope))
            raise challenge(self._settings, needed, endpoint, "insufficient_scope")
        g.claims = claims

    def pullable(self, repositories: list[str]) -> list[str]:
        if not repositories:
            return repositories
        claims = g.get("claims")
        return self._auth.pullable(claims.subject if claims else "", repositories)


def authorizer_for(settings: GatewaySettings, auth: AuthClient) -> Authorizer:
    return TokenAccess(settings, auth) if settings.auth == "token" else OpenAccess()
