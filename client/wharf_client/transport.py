"""HTTP to one registry: scheme choice, authentication, retries with backoff, error decoding.

Every registry operation goes through :meth:`Transport.request`, so retries,
``Retry-After``, token refresh and error messages behave the same for a tag
listing and for the fifth chunk of a 2 GB layer.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urljoin

import requests

from wharf_client import bodies
from wharf_client.auth import challenge as challenges
from wharf_client.auth.credentials import Credential, CredentialStore
from wharf_client.auth.tokens import TokenClient, merge_scopes
from wharf_client.bodies import MAX_JSON_BODY
from wharf_client.errors import (
    AuthenticationError,
    FormatError,
    ProtocolError,
    RegistryError,
    TransportError,
    registry_error,
)
from wharf_client.options import ClientOptions, RegistryOptions
from wharf_client.origins import origin
from wharf_client.reference import api_host
from wharf_client.untrusted import header_number, printable

log = logging.getLogger("wharf_client")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Methods whose request may be sent again when the answer's body broke off: they change nothing.
IDEMPOTENT_READS = frozenset({"GET", "HEAD"})

class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# A request body: bytes, or a factory that opens a fresh stream (so a retry can send it again).
Body = bytes | Callable[[], Readable] | None


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds = header_number(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def backoff_delay(attempt: int, options: ClientOptions, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins, within the cap."""
    if retry_after is not None:
        return min(retry_after, options.max_retry_after)
    base = min(options.max_backoff, options.backoff * (2 ** attempt))
    return float(base * (0.5 + random.random() / 2))


class Transport:
    """One registry host: knows its scheme and auth challenge after the first ping. Thread-safe."""

    def __init__(self, registry: str, session: requests.Session, options: ClientOptions,
                 credentials: CredentialStore, tokens: TokenClient,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.registry = registry
        self.host = api_host(registry)
        self.session = session
        self.options = options
        self.registry_options: RegistryOptions = options.for_registry(registry)
        self._credentials = credentials
        self._tokens = tokens
        self._sleep = sleep
        self._lock = threading.Lock()
        self._base_url: str | None = None
        self._challenge: challenges.Challenge | None = None
        self._credential: Credential | None = None
        # Learned per registry: whether a POST with ?digest= and a body completes an upload (Distribution 2.8 no).
        self.monolithic_post: bool | None = None

    # -- scheme and ping -------------------------------------------------------------------------

    @property
    def verify(self) -> bool:
        return not self.registry_options.insecure

    def credential(self) -> Credential:
        if self._credential is None:
            self._credential = self._credentials.get(self.registry)
        return self._credential

    def use_credential(self, credential: Credential) -> None:
        """Replaces the stored credential for this transport (login verifies new ones this way)."""
        self._credential = credential

    def base_url(self) -> str:
        if self._base_url is None:
            self.ping()
        assert self._base_url is not None
        return self._base_url

    def _schemes(self) -> list[str]:
        if self.registry_options.plain_http:
            return ["http"]
        if self.registry_options.insecure or is_loopback(self.host):
            return ["https", "http"]  # as docker does for insecure registries and localhost
        return ["https"]

    def ping(self) -> challenges.Challenge | None:
        """GET /v2/: picks the scheme and learns how the registry wants to be authenticated."""
        with self._lock:
            if self._base_url is not None:
                return self._challenge
            failure: Exception | None = None
            for scheme in self._schemes():
                url = f"{scheme}://{self.host}/v2/"
                for attempt in range(self.options.retries + 1):
                    try:
                        response = self.session.get(url, timeout=self.options.timeout, verify=self.verify,
                                                    stream=True)
                    except requests.exceptions.SSLError as exc:
                        failure = exc
                        break
                    except requests.exceptions.ConnectionError as exc:
                        failure = exc
                        if attempt >= min(self.options.retries, 2):
                            break
                        self._sleep(backoff_delay(attempt, self.options))
                        continue
                    except (requests.RequestException, ValueError) as exc:  # a malformed answer (two lengths, a
                        raise TransportError(f"GET {url}: {_short(exc)}") from None  # Location urllib cannot parse)
                    with response:
                        if response.status_code in RETRY_STATUSES and attempt < self.options.retries:
                            self._sleep(backoff_delay(attempt, self.options,
                                                      retry_after_seconds(response.headers.get("Retry-After"))))
                            continue
                        return self._learn(url, response)
            raise TransportError(f"cannot reach registry {self.registry} ({', '.join(self._schemes())}): "
                                 f"{_short(failure)}")

    def _learn(self, url: str, response: requests.Response) -> challenges.Challenge | None:
        if response.status_code == 401 and origin(response.url) != origin(url):
            raise _foreign_401(response, self.registry)
        if response.status_code == 401:
            self._challenge = challenges.preferred(response.headers.get("WWW-Authenticate", ""))
        elif response.status_code != 200:
            raise registry_error("GET", url, response.status_code, bodies.bounded_text(response))
        self._base_url = url.removesuffix("/v2/")
        return self._challenge

    @property
    def https_only(self) -> bool:
        """Whether this registry is reached over verified HTTPS, so nothing of it may travel in clear text."""
        return self.base_url().startswith("https://") and self.verify

    def on_registry(self, url: str) -> bool:
        """Whether ``url`` is on the registry's origin (scheme, host and port): the only place credentials go."""
        return origin(url) == origin(self.base_url())

    def url(self, path: str) -> str:
        """The absolute URL of an API path; an absolute URL only when it is on the registry's origin."""
        if not path.startswith(("http://", "https://")):
            return self.base_url() + path
        if not self.on_registry(path):
            raise ProtocolError(f"refusing to send a request for {self.registry} to {printable(path)}: "
                                f"it is not on {self.base_url()}")
        return path

    # -- authentication --------------------------------------------------------------------------

    def _authorization(self, scopes: list[str]) -> str | None:
        found = self._challenge
        if found is None:
            return None
        credential = self.credential()
        if found.scheme == "basic":
            if credential.anonymous:
                return None
            raw = f"{credential.username}:{credential.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if found.scheme == "bearer":
            return "Bearer " + self._tokens.token(found, scopes, credential, self.verify,
                                                  https_only=self.https_only, registry=self.host)
        return None

    def _reauthenticate(self, response: requests.Response, scopes: list[str]) -> list[str]:
        """After a 401: adopt the new challenge, drop the rejected token; returns the scopes to ask for."""
        fresh = challenges.preferred(response.headers.get("WWW-Authenticate", ""))
        if fresh is None:
            raise registry_error(response.request.method or "", response.url.split("?", 1)[0], 401,
                                 bodies.bounded_text(response))
        self._challenge = fresh
        raw = response.request.headers.get("Authorization", "")
        sent = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        if fresh.scheme == "bearer":
            credential = self.credential()
            if sent.startswith("Bearer "):
                self._tokens.cache.discard(self._tokens.cache_key(fresh, credential, self.host), sent[7:])
            return merge_scopes([*scopes, *fresh.scopes])
        if self.credential().anonymous:
            raise _needs_login(response, self.registry)
        return scopes

    # -- requests --------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, scopes: Iterable[str] = (), expect: Iterable[int] = (200,),
                headers: Mapping[str, str] | None = None, params: Any = None, body: Body = None,
                stream: bool = False, allow_redirects: bool = True, retries: int | None = None,
                body_limit: int = MAX_JSON_BODY) -> requests.Response:
        """Sends with auth and retries; returns the response when its status is in ``expect``, else raises.

        Connection errors and 429/5xx are retried with backoff when the body can be sent again
        (bytes or a factory). With ``stream=True`` the caller must close the response; without,
        the body is read here, at most ``body_limit`` bytes (FormatError beyond), and a GET
        whose answer breaks off is sent again. A 401 from another host (a redirect's target)
        is an error: its challenge is never adopted, so no credential follows it there.
        """
        wanted = merge_scopes(scopes)
        allowed = set(expect)
        limit = self.options.retries if retries is None else retries
        url = self.url(path)
        auth_rounds = 0
        attempt = 0
        while True:
            send_headers = dict(headers or {})
            send_headers.setdefault("User-Agent", self.options.user_agent)
            authorization = self._authorization(wanted)
            if authorization:
                send_headers["Authorization"] = authorization
            data = body() if callable(body) else body
            try:
                response = self.session.request(method, url, headers=send_headers, params=params, data=data,
                                                stream=True, allow_redirects=allow_redirects,
                                                timeout=self.options.timeout, verify=self.verify)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                _close(data)
                if attempt >= limit:
                    raise TransportError(f"{method} {url}: {_short(exc)} (after {attempt + 1} attempt(s))") from None
                log.debug("retrying %s %s after %s", method, url, _short(exc))
                self._sleep(backoff_delay(attempt, self.options))
                attempt += 1
                continue
            except (requests.RequestException, ValueError) as exc:  # a malformed answer: no retry
                # (two Content-Lengths, a redirect to a Location urllib cannot parse such as "http://[::1")
                _close(data)
                raise TransportError(f"{method} {url}: {_short(exc)}") from None
            _close(data)
            if response.status_code == 401 and not self.on_registry(response.url):
                raise _foreign_401(response, self.registry)
            if response.status_code == 401 and auth_rounds < 2:
                auth_rounds += 1
                try:
                    wanted = self._reauthenticate(response, wanted)
                finally:
                    response.close()
                continue
            if response.status_code in RETRY_STATUSES and response.status_code not in allowed and attempt < limit:
                delay = backoff_delay(attempt, self.options, retry_after_seconds(response.headers.get("Retry-After")))
                log.debug("retrying %s %s after HTTP %s in %.1fs", method, url, response.status_code, delay)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            if response.status_code not in allowed:
                raise self.error(response)
            if stream:
                return response
            try:
                bodies.preload(response, body_limit, "the answer")
            except TransportError as exc:
                response.close()
                if method not in IDEMPOTENT_READS or attempt >= limit:
                    raise
                log.debug("retrying %s %s after %s", method, url, exc)
                self._sleep(backoff_delay(attempt, self.options))
                attempt += 1
                continue
            except FormatError:
                response.close()
                raise
            return response

    def error(self, response: requests.Response) -> RegistryError:
        """The registry's error for a response, its body read (bounded) and the connection released."""
        method = response.request.method or ""
        try:
            text = "" if method == "HEAD" else bodies.bounded_text(response)
        finally:
            response.close()
        if method == "HEAD" and response.status_code != 404:
            text = self._explain_head(response)
        url = response.url.split("?", 1)[0]
        if response.status_code == 401:
            return _needs_login(response, self.registry, text)
        error = registry_error(method, url, response.status_code, text)
        if response.status_code == 403 and self.credential().anonymous and not error.errors:
            error.args = (f"{error}: access denied to anonymous users; run `wharf login {self.registry}`",)
        elif response.status_code == 403 and self.credential().anonymous:
            error.args = (f"{error} (not logged in to {self.registry}: run `wharf login {self.registry}`)",)
        return error

    def _explain_head(self, response: requests.Response) -> str:
        """A HEAD answer has no body, so no reason: the same request as a GET brings the registry's message."""
        # The Authorization header goes back only where it came from: the HEAD may have been redirected.
        passed = ("Accept", "Authorization") if self.on_registry(response.url) else ("Accept",)
        headers = {k: v for k, v in response.request.headers.items() if k in passed}
        try:
            again = self.session.get(response.url, headers=headers, stream=True, timeout=self.options.timeout,
                                     verify=self.verify, allow_redirects=False)
        except (requests.RequestException, ValueError):
            return ""
        with again:
            return bodies.bounded_text(again) if again.status_code == response.status_code else ""

    def resolve(self, response: requests.Response, location: str, header: str = "Location") -> str:
        """A ``Location`` (or ``Link``) header made absolute against the URL of the request it answered.

        It must stay on the registry's origin: the next request carries the registry's
        credentials, so a registry (or a proxy) naming another host, port or scheme (an
        https to http downgrade included) is refused rather than followed.
        """
        try:
            resolved = urljoin(response.url, location)
        except ValueError:  # "http://[::1", say
            raise ProtocolError(f"{bodies.where(response)}: the {header} header {printable(location[:200])!r} "
                                "is not a URL") from None
        if not self.on_registry(resolved):
            raise ProtocolError(f"{bodies.where(response)}: the {header} header points at {printable(resolved)}, "
                                f"not at {self.base_url()}: refusing to follow it with the credentials "
                                f"for {self.registry}")
        return resolved


def _foreign_401(response: requests.Response, registry: str) -> AuthenticationError:
    """A 401 from another host that a redirect led to: an error, never a challenge to answer."""
    response.close()
    url = response.url.split("?", 1)[0]
    return AuthenticationError(response.request.method or "", url, 401, [],
                               f"{url} (reached by a redirect from {registry}) asks for authentication; "
                               f"the credentials for {registry} are not sent to another host")


def _needs_login(response: requests.Response, registry: str, text: str = "") -> AuthenticationError:
    error = registry_error(response.request.method or "", response.url.split("?", 1)[0], 401, text)
    hint = f"authentication required by {registry}: run `wharf login {registry}`, or check the credentials"
    entries = error.errors
    return AuthenticationError(error.method, error.url, 401, entries, "" if entries else hint)


def _close(data: object) -> None:
    closer = getattr(data, "close", None)
    if callable(closer):
        closer()


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _short(exc: BaseException | None) -> str:
    """The useful part of a requests/urllib3 error, which nests its cause several times."""
    if exc is None:
        return "no answer"
    text = str(exc)
    found: list[str] = _ERRNO_RE.findall(text)
    if found:
        return found[-1].strip()
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed ({text[-200:]})"
    return f"{type(exc).__name__}: {text[:300]}"


__all__ = ["RETRY_STATUSES", "AuthenticationError", "Body", "Transport", "backoff_delay", "retry_after_seconds"]
