"""A client for the upstream registry a pull-through mirror fills itself from.

Synchronous: the blob store calls it from executor threads. One urllib3 pool manager per upstream,
explicit timeouts, TLS verified (plain http only with ``insecure=True``). Anonymous first, then what
``WWW-Authenticate`` asks: Bearer tokens per scope (cached, one fetch for concurrent callers) or Basic.
Credentials and tokens never appear in logs or exceptions. Malformed input (name, tag, digest) raises
:class:`RegistryError` before any request.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import NoReturn

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, SSLError, TimeoutError
from urllib3.response import BaseHTTPResponse

from services.common import digests, mediatypes, names
from services.common.errors import RegistryError

CHUNK_SIZE = 1024 * 1024
# The slowest an upstream may send a blob: each CHUNK_SIZE of it within this many seconds (about
# 17 KB/s). Each read also has the client's timeout, but an upstream sending a byte every few
# seconds never trips that, and held a fill (and its thread) for as long as it liked.
CHUNK_SECONDS = 60.0
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_REDIRECTS = 5
MAX_TOKEN_ANSWER_BYTES = 1024 * 1024
# The longest token taken from a token service (real ones are a few KB; servers refuse headers past
# 8-16 KB anyway). Each is cached per scope: an upstream answering ~1 MB tokens for every scope held
# up to MAX_CACHED_TOKENS of them, a gigabyte of the blob store's memory.
MAX_TOKEN_BYTES = 16 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_CACHED_TOKENS = 1024
DEFAULT_TOKEN_SECONDS = 60.0  # the token spec's default when expires_in is missing
MANIFEST_ACCEPT = ", ".join([mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST,
                             mediatypes.DOCKER_MANIFEST_LIST, mediatypes.DOCKER_MANIFEST])
NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # a token goes into a header: visible ASCII only


class UpstreamError(Exception):
    """A failure of the upstream; ``host`` names it (never credentials): "upstream quay.io unreachable"."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"upstream {host} {detail}")
        self.host = host


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset, timeout, TLS failure, 5xx, 429. ``retry_after`` in seconds if told."""

    def __init__(self, host: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(host, detail)
        self.retry_after = retry_after


class UpstreamNotFound(UpstreamError):
    """404, or MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN."""


class UpstreamDenied(UpstreamError):
    """403, 401 even after authenticating, credentials refused by the token realm."""


class UpstreamInvalid(UpstreamError):
    """A digest mismatch, an oversized manifest, a malformed or unexpected answer."""


@dataclasses.dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: dict[str, str]  # parameter names in lower case


@dataclasses.dataclass(frozen=True)
class ManifestAnswer:
    digest: str
    media_type: str
    size: int
    body: bytes | None  # None for a HEAD


@dataclasses.dataclass(frozen=True)
class _Auth:
    header: str = dataclasses.field(repr=False)  # never in a repr or a traceback's locals
    key: tuple[str, str, str] | None  # the token's (realm, service, scope); None for Basic
    token: str = dataclasses.field(default="", repr=False)


# RFC 9110 section 11.6.1: challenge = scheme [ token68 / #auth-param ], challenges comma-separated.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME_RE = re.compile(rf"[\s,]*({_TOKEN})")
_PARAM_RE = re.compile(rf"[\s,]*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*(?=,|$)")
_TOKEN68_RE = re.compile(r"\s+[A-Za-z0-9._~+/-]+=*\s*(?=,|$)")
_SEPARATOR_RE = re.compile(r"\s*(?:,|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` value, in order; unparsable tails are dropped."""
    found: list[Challenge] = []
    position = 0
    while position < len(header):  # every pass consumes at least one token or stops
        scheme = _SCHEME_RE.match(header, position)
        if not scheme:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        token68 = _TOKEN68_RE.match(header, position)
        if token68:
            position = token68.end()
        while param := _PARAM_RE.match(header, position):
            quoted, bare = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            params.setdefault(param.group(1).lower(), value)
            position = param.end()
        found.append(Challenge(scheme.group(1).lower(), params))
        if not _SEPARATOR_RE.match(header, position):
            break  # neither the end nor a comma before the next challenge
    return found


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class BlobStream:
    """The body of one blob as chunks; a context manager and an iterator. ``size`` is the answer's
    Content-Length (None when the upstream did not send one). The digest is not checked here: the
    caller hashes while storing and compares with ``digest``."""

    def __init__(self, response: BaseHTTPResponse, digest: str, host: str) -> None:
        self.digest = digest
        self.host = host
        length = response.headers.get("Content-Length", "")
        self.size: int | None = int(length) if length.isdigit() else None
        self._response = response
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self._chunk():
                yield chunk
            self._ended = True
        except (HTTPError, OSError) as exc:
            raise _unavailable(self.host, exc) from exc

    def _chunk(self) -> bytes:
        """The next CHUNK_SIZE bytes (fewer at the end), read as they come, so that an upstream
        too slow for CHUNK_SECONDS is noticed while it trickles."""
        parts: list[bytes] = []
        size = 0
        deadline = time.monotonic() + CHUNK_SECONDS
        while size < CHUNK_SIZE and (data := self._response.read1(CHUNK_SIZE - size, decode_content=False)):
            parts.append(data)
            size += len(data)
            if size < CHUNK_SIZE and time.monotonic() > deadline:
                raise UpstreamUnavailable(self.host, f"too slow: less than {CHUNK_SIZE} bytes in "
                                                     f"{CHUNK_SECONDS:.0f} s")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._ended:
            _finish(self._response)
        else:  # cut short (too slow, a mismatch, the caller gone): never drained at the upstream's pace
            self._response.close()
            self._response.release_conn()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Order matters: NewConnectionError is a TimeoutError.
_WHY = ((SSLError, "TLS failed"), (NewConnectionError, "cannot connect"), (TimeoutError, "timed out"),
        (ProtocolError, "connection broken"))


def _unavailable(host: str, exc: Exception, via: str = "") -> UpstreamUnavailable:
    why = next((why for kind, why in _WHY if isinstance(exc, kind)), type(exc).__name__)
    return UpstreamUnavailable(host, f"unreachable{via} ({why})")


def _finish(response: BaseHTTPResponse) -> None:
    """Gives the connection back to the pool: a small unread body (a 401, a redirect) is read first,
    a large one closes the connection."""
    length = response.headers.get("Content-Length", "")
    if not response.closed and length.isdigit() and int(length) <= MAX_ERROR_BODY_BYTES:
        response.drain_conn()
    if not response.closed:
        response.close()
    response.release_conn()


class UpstreamClient:
    """One upstream registry. Thread-safe; share one instance per upstream."""

    def __init__(self, url: str, username: str = "", password: str = "", insecure: bool = False,
                 timeout: float = 30.0, pool_size: int = 16) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError("upstream URL must be http(s)://host[:port] (credentials go in username/password)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"upstream URL {parts.netloc} must have no path, query or fragment")
        if parts.scheme == "http" and not insecure:
            raise ValueError(f"upstream {parts.netloc} over plain http needs insecure=True")
        if timeout <= 0 or pool_size < 1:
            raise ValueError("timeout and pool_size must be positive")
        self.host = parts.netloc
        self._hostname = parts.hostname
        self.insecure = insecure
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._basic = ("Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()) if username else ""
        self._use_basic = False  # the upstream asked for Basic authentication
        self._realm: tuple[str, str] | None = None  # (realm, service) of the last Bearer challenge
        self._pool = urllib3.PoolManager(num_pools=8, maxsize=pool_size, block=False, cert_reqs="CERT_REQUIRED",
                                         timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}  # key -> (token, usable until)
        self._flights: dict[tuple[str, str, str], threading.Lock] = {}

    def close(self) -> None:
        self._pool.clear()

    # -- the registry API ------------------------------------------------------------------------

    def manifest(self, repository: str, reference: str, head: bool = False) -> ManifestAnswer:
        """A manifest by tag or digest, verified against Docker-Content-Digest and a digest reference."""
        names.validate_name(repository)
        by_digest = ":" in reference
        if by_digest:
            digests.validate(reference)
        else:
            names.validate_tag(reference)
        response, _ = self._request("HEAD" if head else "GET", f"/v2/{repository}/manifests/{reference}",
                                        repository, {"Accept": MANIFEST_ACCEPT})
        try:
            if response.status != 200:
                self._raise_for(response, f"manifest {repository}{'@' if by_digest else ':'}{reference}")
            header_digest = response.headers.get("Docker-Content-Digest", "").strip()
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            length = response.headers.get("Content-Length", "")
            body = None if head else self._read_capped(response, MAX_MANIFEST_BYTES, "manifest")
        finally:
            _finish(response)
        if body is None:
            if not length.isdigit() or int(length) > MAX_MANIFEST_BYTES:
                raise UpstreamInvalid(self.host, f"answered a manifest HEAD with Content-Length {length[:20]!r}")
            size = int(length)
        else:
            size = len(body)
            media_type = media_type or self._sniff_media_type(body)
        for expected, what in ((header_digest, "Docker-Content-Digest"), (reference if by_digest else "", "digest")):
            if expected:
                self._verify(body, expected, header_digest, what)
        digest = reference if by_digest else header_digest or (digests.of(body) if body is not None else "")
        if not digest:
            raise UpstreamInvalid(self.host, "answered a manifest HEAD by tag without Docker-Content-Digest")
        return ManifestAnswer(digest, media_type, size, body)

    def blob(self, repository: str, digest: str) -> BlobStream:
        """A streaming GET of a blob (never concluded from a HEAD: chained mirrors answer HEAD 404 for
        blobs they have not cached yet). Redirects to other hosts are followed without Authorization."""
        names.validate_name(repository)
        digests.validate(digest)
        url = f"{self._base}/v2/{repository}/blobs/{digest}"
        response, auth = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository, {})
        hops = 0
        while response.status in REDIRECTS:  # bounded by MAX_REDIRECTS
            location = response.headers.get("Location", "")
            _finish(response)
            hops += 1
            if hops > MAX_REDIRECTS:
                raise UpstreamInvalid(self.host, f"redirected a blob more than {MAX_REDIRECTS} times")
            url = urllib.parse.urljoin(url, location)
            target = urllib.parse.urlsplit(url)
            if not location or target.scheme not in ("http", "https") or not target.hostname:
                raise UpstreamInvalid(self.host, "redirected a blob to an unusable location")
            if target.scheme == "http" and not self.insecure:
                raise UpstreamInvalid(self.host, f"redirected a blob to plain http on {target.hostname}")
            same_origin = f"{target.scheme}://{target.netloc}" == self._base
            headers = {"Authorization": auth.header} if auth and same_origin else {}
            response = self._send("GET", url, headers)
        if response.status != 200:
            try:
                self._raise_for(response, f"blob {digest} in {repository}")
            finally:
                _finish(response)
        return BlobStream(response, digest, self.host)

    def referrers(self, repository: str, digest: str, artifact_type: str = "") -> bytes | None:
        """The OCI index of the referrers of ``digest`` (OCI 1.1 API, else the ``<alg>-<hex>`` tag
        schema); None when the upstream has neither."""
        names.validate_name(repository)
        algorithm, encoded = digests.parse(digest)
        path = f"/v2/{repository}/referrers/{digest}"
        if artifact_type:
            path += "?" + urllib.parse.urlencode({"artifactType": artifact_type})
        response, _ = self._request("GET", path, repository, {"Accept": mediatypes.OCI_INDEX})
        try:
            if response.status == 200:
                body = self._read_capped(response, MAX_MANIFEST_BYTES, "referrers index")
                filtered = "artifacttype" in response.headers.get("OCI-Filters-Applied", "").lower()
                return body if not artifact_type or filtered else self._filter(body, artifact_type)
            if response.status != 404:  # 404: no referrers API, try the tag schema
                self._raise_for(response, f"referrers of {digest}")
        finally:
            _finish(response)
        try:
            fallback = self.manifest(repository, f"{algorithm[:32]}-{encoded[:64]}")
        except UpstreamNotFound:
            return None
        if fallback.media_type != mediatypes.OCI_INDEX or fallback.body is None:
            raise UpstreamInvalid(self.host, f"has a referrers tag for {digest} that is not an OCI index")
        return fallback.body if not artifact_type else self._filter(fallback.body, artifact_type)

    # -- requests and authentication -------------------------------------------------------------

    def _send(self, method: str, url: str, headers: dict[str, str]) -> BaseHTTPResponse:
        try:
            return self._pool.request(method, url, headers={"User-Agent": "wharf-mirror", **headers},
                                      redirect=False, retries=False, preload_content=False, decode_content=False)
        except (HTTPError, OSError) as exc:
            other = urllib.parse.urlsplit(url).hostname
            raise _unavailable(self.host, exc, "" if other == self._hostname else f" via {other}") from exc

    def _request(self, method: str, path: str, repository: str,
                 headers: dict[str, str]) -> tuple[BaseHTTPResponse, _Auth | None]:
        """Sends a request to the upstream, answering one authentication challenge; returns the
        response (body unread) and the authentication it carried. A second 401 is UpstreamDenied."""
        auth = self._known_auth(repository)
        for attempt in range(2):
            sent = {**headers, "Authorization": auth.header} if auth else headers
            response = self._send(method, self._base + path, sent)
            if response.status != 401:
                return response, auth
            challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
            _finish(response)
            if attempt == 0:
                auth = self._answer(challenges, repository, auth)
        raise self._refused(repository)

    def _refused(self, repository: str) -> UpstreamDenied:
        return UpstreamDenied(self.host, f"refused {'the credentials' if self._basic else 'anonymous access'} "
                                         f"to {repository}")

    def _known_auth(self, repository: str) -> _Auth | None:
        """What to send before any challenge, from what earlier challenges asked for."""
        if self._use_basic:
            return _Auth(self._basic, None)
        if self._realm is None:
            return None
        key = (*self._realm, f"repository:{repository}:pull")
        token = self._token(key, None)
        return _Auth(f"Bearer {token}", key, token)

    def _answer(self, challenges: list[Challenge], repository: str, rejected: _Auth | None) -> _Auth:
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            realm, service = bearer.params.get("realm", ""), bearer.params.get("service", "")
            realm_parts = urllib.parse.urlsplit(realm)
            if realm_parts.scheme not in ("http", "https") or not realm_parts.hostname or "@" in realm_parts.netloc:
                raise UpstreamInvalid(self.host, "sent a Bearer challenge without a usable http(s) realm")
            self._realm = (realm, service)
            key = (realm, service, bearer.params.get("scope") or f"repository:{repository}:pull")
            stale = rejected.token if rejected and rejected.key == key else None
            token = self._token(key, stale)
            return _Auth(f"Bearer {token}", key, token)
        if any(c.scheme == "basic" for c in challenges):
            if not self._basic or (rejected and rejected.key is None):
                raise self._refused(repository)
            self._use_basic = True
            return _Auth(self._basic, None)
        raise UpstreamDenied(self.host, "asks for authentication without a Bearer or Basic challenge")

    def _token(self, key: tuple[str, str, str], stale: str | None) -> str:
        """A token for (realm, service, scope): cached until shortly before it expires, fetched by
        one caller at a time per scope (the others wait and take its token). ``stale`` is a token the
        upstream just refused: it is not handed out again."""
        with self._lock:
            value, until = self._tokens.get(key, ("", 0.0))
            if value and value != stale and until > time.monotonic():
                return value
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:
            with self._lock:
                value, until = self._tokens.get(key, ("", 0.0))
                if value and value != stale and until > time.monotonic():
                    return value
            try:
                value, lifetime = self._fetch_token(*key)
            finally:
                with self._lock:
                    if self._flights.get(key) is flight:
                        del self._flights[key]
            margin = min(30.0, max(5.0, lifetime / 10))  # refresh shortly before it expires
            with self._lock:
                self._tokens.pop(key, None)  # re-inserted last: the oldest entry goes first when full
                if len(self._tokens) >= MAX_CACHED_TOKENS:
                    del self._tokens[next(iter(self._tokens))]
                self._tokens[key] = (value, time.monotonic() + max(0.0, lifetime - margin))
            return value

    def _fetch_token(self, realm: str, service: str, scope: str) -> tuple[str, float]:
        realm_parts = urllib.parse.urlsplit(realm)
        headers: dict[str, str] = {}
        if self._basic:
            if realm_parts.scheme != "https" and not self.insecure:
                raise UpstreamInvalid(self.host, f"token realm on {realm_parts.hostname} is not https: "
                                                 "credentials not sent")
            headers["Authorization"] = self._basic
        query = ([("service", service)] if service else []) + [("scope", s) for s in scope.split()]
        url = (realm + ("&" if realm_parts.query else "?") + urllib.parse.urlencode(query)) if query else realm
        response = self._send("GET", url, headers)
        try:
            if response.status in (401, 403):
                raise UpstreamDenied(self.host, f"token service on {realm_parts.hostname} refused "
                                                f"{'the credentials' if self._basic else 'an anonymous token'}")
            if response.status != 200:
                self._raise_for(response, f"a token from {realm_parts.hostname}")
            body = self._read_capped(response, MAX_TOKEN_ANSWER_BYTES, "token answer")
        finally:
            _finish(response)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        token = answer.get("token") or answer.get("access_token")
        too_long = isinstance(token, str) and len(token) > MAX_TOKEN_BYTES
        if not isinstance(token, str) or too_long or not _TOKEN_CHARS.fullmatch(token):
            raise UpstreamInvalid(self.host, f"token service on {realm_parts.hostname} sent no usable token"
                                             + (f" (over {MAX_TOKEN_BYTES} bytes)" if too_long else ""))
        expires = answer.get("expires_in")
        if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
            return token, float(expires)
        return token, DEFAULT_TOKEN_SECONDS

    # -- answers ---------------------------------------------------------------------------------

    def _read_capped(self, response: BaseHTTPResponse, limit: int, what: str) -> bytes:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise UpstreamInvalid(self.host, f"sent a {what} of {length} bytes (limit {limit})")
        parts: list[bytes] = []
        received = 0
        try:
            for chunk in response.stream(64 * 1024, decode_content=False):
                received += len(chunk)
                if received > limit:
                    raise UpstreamInvalid(self.host, f"sent a {what} over {limit} bytes")
                parts.append(chunk)
        except (HTTPError, OSError) as exc:
            raise _unavailable(self.host, exc) from exc
        return b"".join(parts)

    def _raise_for(self, response: BaseHTTPResponse, what: str) -> NoReturn:
        status = response.status
        codes: set[str] = set()
        try:
            errors = json.loads(self._read_capped(response, MAX_ERROR_BODY_BYTES, "error")).get("errors")
            codes = {str(e.get("code")) for e in errors if isinstance(e, dict)}
        except (UpstreamError, ValueError, AttributeError, TypeError):
            pass  # an error answer without the OCI body
        detail = f"answered HTTP {status}" + (f" {','.join(sorted(codes))}" if codes else "") + f" for {what}"
        if status == 404 or codes & NOT_FOUND_CODES:
            raise UpstreamNotFound(self.host, detail)
        if status in (401, 403):
            raise UpstreamDenied(self.host, detail)
        if status == 429 or status >= 500:
            raise UpstreamUnavailable(self.host, detail, parse_retry_after(response.headers.get("Retry-After")))
        raise UpstreamInvalid(self.host, detail)

    def _verify(self, body: bytes | None, expected: str, header_digest: str, what: str) -> None:
        """``body`` (None: a HEAD, compared by Docker-Content-Digest) matches ``expected``."""
        try:
            algorithm, encoded = digests.parse(expected)
        except RegistryError:
            raise UpstreamInvalid(self.host, "sent a malformed Docker-Content-Digest") from None
        if body is None:  # a HEAD: only the digests can be compared
            matches = not header_digest or expected == header_digest
        else:
            matches = hashlib.new(algorithm, body).hexdigest() == encoded
        if not matches:
            raise UpstreamInvalid(self.host, f"sent a manifest that does not match its {what} {expected}")

    def _sniff_media_type(self, body: bytes) -> str:
        try:
            found = json.loads(body).get("mediaType")
        except (ValueError, AttributeError):
            found = None
        if not isinstance(found, str) or not found:
            raise UpstreamInvalid(self.host, "sent a manifest without Content-Type or mediaType")
        return found

    def _filter(self, body: bytes, artifact_type: str) -> bytes:
        """Filters an index the upstream did not filter itself (OCI-Filters-Applied absent)."""
        try:
            index = json.loads(body)
            index["manifests"] = [m for m in index["manifests"] if m.get("artifactType") == artifact_type]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamInvalid(self.host, "sent a malformed referrers index") from exc
        return json.dumps(index, separators=(",", ":")).encode()
