"""Rate limits in the gateway (issue 19): per account and per client address, per repository pattern.

What is limited: each request costs one token of the first matching rule's bucket for its client
address (services/common/client_address.py) and, when it carries a valid token, one of the bucket
for its account; an upload or manifest body costs its bytes in the rule's push-bytes buckets (the
same two identities). Over a limit the answer is ``429 TOOMANYREQUESTS`` with ``Retry-After``.

Where in the request: before the route's authorization, so an unauthenticated flood (no token, a
bad one, a scan of names) is counted against its address and refused before it costs a token
check or a call. The account comes from :meth:`Authorizer.subject`, the same verified-token cache
authorization uses; an address already refused is answered before its token is even looked at.
Cache hits answered on the worker's hot-read path are counted the same (:class:`LimitedHotReads`).

Shared, yet cheap: the buckets live in the metadata service's Redis (services/metadata/ratelimit.py)
so a limit holds across workers and replicas, but a worker does not call per request: it leases
``WHARF_RATELIMIT_LEASE`` of a burst at once and spends the lease locally, so a client under its
limit costs about one call per lease. Every token spent was taken from the shared bucket, so a
client never gets more than the rule allows over time; a lease taken before a window and spent in it
lets at most workers x replicas x lease more through at once, and tokens leased by a worker the
client's next requests do not reach are missing elsewhere (it may be refused that much early).
A refusal is remembered locally until its ``Retry-After``, so a flood over its limit costs no
calls. Bodies pay in bytes as debt: the declared ``Content-Length`` is charged up front whenever
the bucket is not in debt (it may go below zero), a streamed body (no length) once it has arrived;
the next body waits until the debt is repaid, on every worker: a lease of bytes is only taken from
what the bucket holds, never borrowed with the debt (services/api/leases.py).

When the metadata service is slow or down, requests pass (fail open, logged): a rate limit
protects capacity, not secrets, and the registry must keep serving its cached reads. A call has
a short deadline (``TAKE_TIMEOUT``), and after a failure no call is made for ``OUTAGE_SECONDS``.

With no rate-limit rule at all, a request costs one check of an empty tuple: the rules come from
the gateway's policy cache (services/api/policy.py), refreshed in the background.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, after_this_request, g, request

from services.api import routes
from services.api.access import Authorizer
from services.api.context import Context
from services.api.http_metrics import INPUT_KEY
from services.api.leases import MAX_LOCAL_BUCKETS, Leases, Want
from services.common.client_address import Network, client_address
from services.common.errors import TOOMANYREQUESTS, RegistryError
from services.common.governance import Policy, RateLimit
from services.common.names import MAX_NAME_LENGTH, is_valid_name
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.ui.session import read_session

log = logging.getLogger("wharf.gateway.ratelimit")
_MAX_RULE_MEMO = 4096
# A hot-read memo key longer than this (path, peer, X-Forwarded-For and Authorization together) is
# remembered by its digest: each may be a client's 8 KiB, and 4,096 of them held ~80 MB per worker.
_MAX_MEMO_KEY = 2048
_IDENTITY_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
# Bodies that are pushes: an upload's chunks and a manifest.
_PUSH_ENDPOINTS = frozenset({"uploads", "upload", "manifest"})
# Web UI pages that read or delete one repository, named by their ``name`` parameter (services/ui/views.py):
# counted under that repository's rule, as the registry API's requests for it are (they escaped it).
_UI_NAMED = frozenset({"ui_repository", "ui_manifest", "ui_delete"})


def _authorization(endpoint: str) -> str:
    """Whom the request speaks for: its ``Authorization`` header, or on a web UI page the token
    its session cookie holds (a UI session was counted by its address only, so a signed-in account
    escaped its own bucket by browsing from many addresses)."""
    header = request.headers.get("Authorization", "")
    if header or not endpoint.startswith("ui_"):
        return header
    session = read_session(request)
    return f"Bearer {session.token}" if session is not None and session.token else ""


class RuleFinder:
    """The rate-limit rules of the gateway's policy cache (services/api/policy.py, refreshed in the
    background), and which one covers a repository, remembered per name until the rules change."""

    def __init__(self, current: Callable[[], Policy]) -> None:
        self._current = current
        self.policy = current  # the rules now (the cache's own method: one call on the hot path)
        self._state: tuple[Policy | None, dict[str, RateLimit | None]] = (None, {})

    def rules(self) -> tuple[RateLimit, ...]:
        return self._current().ratelimits

    def rule_for(self, repository: str) -> RateLimit | None:
        """The first rule covering ``repository`` ("" for none; an invalid name counts as none:
        the view refuses it anyway)."""
        policy = self._current()
        known, memo = self._state
        if known is not policy:
            memo = {}
            self._state = (policy, memo)
        if len(repository) > MAX_NAME_LENGTH:
            repository = ""  # invalid (the view says so): not remembered, a client's 4 KiB at a time
        try:
            return memo[repository]
        except KeyError:
            pass
        if len(memo) >= _MAX_RULE_MEMO:
            memo.clear()
        rule = memo[repository] = policy.ratelimit(repository if repository and is_valid_name(repository) else "")
        return rule


def _identity(value: str) -> str:
    """An account or address as a bucket key's part (anything unusual hashed: keys stay bounded)."""
    if _IDENTITY_RE.fullmatch(value):
        return value
    return "h" + hashlib.blake2b(value.encode(errors="replace"), digest_size=12).hexdigest()


def _address_bucket(address: str) -> str:
    """Who an address's bucket counts: an IPv4 address, or an IPv6 /64 (one host is given a whole /64
    to pick source addresses from, so counting per IPv6 address let one client escape every limit
    by changing address per request: the login throttle counts per /64 too, services/auth/peers.py).
    An IPv4-mapped IPv6 address counts as its IPv4 address; anything else is kept as it is."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}-64"  # "-": "/" is not a key character
    return str(ip)


def _identities(address: str, account: str) -> list[str]:
    return [f"addr:{_identity(_address_bucket(address))}"] + ([f"acct:{_identity(account)}"] if account else [])


def _rule_id(rule: RateLimit) -> str:
    return hashlib.blake2b(rule.repositories.encode(), digest_size=6).hexdigest()


def retry_after(seconds: float) -> str:
    """Whole seconds, at least 1 (HTTP's Retry-After has no fractions)."""
    return str(max(1, math.ceil(seconds)))


class RateLimiter:
    """The rules, the leases, and the wants of one request."""

    def __init__(self, watch: RuleFinder, leases: Leases, authorizer: Authorizer, lease_share: float,
                 max_body: int = 1 << 40) -> None:
        self.watch = watch
        self._max_body = max_body  # a larger body is refused (413) before it is read: never charged
        self.leases = leases
        self._authorizer = authorizer
        self._share = lease_share
        # Each client's request wants, worked out once (bounded: cleared when full).
        self._requests: dict[tuple[RateLimit, str, str], list[Want]] = {}

    def wants(self, rule: RateLimit, address: str, account: str, body: int = 0) -> list[Want]:
        """The request's wants: a token per identity; with ``body`` (bytes; 0: not a push body, -1:
        a streamed one, checked for debt now and charged once received) bytes too."""
        found = self._requests.get((rule, address, account))
        if found is None:
            if len(self._requests) >= MAX_LOCAL_BUCKETS:
                self._requests.clear()
            found = self._requests[(rule, address, account)] = [
                Want(f"{_rule_id(rule)}:req:{who}", rule.requests_per_second, rule.burst, 1.0,
                     max(1.0, math.floor(rule.burst * self._share))) for who in _identities(address, account)]
        rate = rule.push_bytes_per_second
        if not (body and rate):
            return found
        lease = max(1.0, math.floor(rate * self._share))
        return found + [Want(f"{_rule_id(rule)}:bytes:{who}", rate, rate, max(body, 1), lease, gpb.TokenBucket.DEBT)
                        for who in _identities(address, account)]

    def refusal(self, rule: RateLimit, seconds: float, wants: Sequence[Want] = ()) -> RegistryError:
        """The 429, naming the limit that refused (bytes when a bytes bucket did)."""
        if any(w.take == gpb.TokenBucket.DEBT and self.leases.refused(w.key) for w in wants):
            limit = f"{rule.push_bytes_per_second} pushed bytes per second"
        else:
            limit = f"{rule.requests_per_second:g} requests per second (burst {rule.burst})"
        return RegistryError(TOOMANYREQUESTS, f"over the rate limit of {limit} for {rule.repositories}; retry later",
                             headers={"Retry-After": retry_after(seconds)})

    def address_key(self, rule: RateLimit, address: str) -> str:
        return f"{_rule_id(rule)}:req:addr:{_identity(_address_bucket(address))}"

    def before_request(self) -> None:
        """Flask's hook: counts the request, or raises the 429."""
        if not self.watch.rules():
            return
        found = routes.match(request.path)
        endpoint, name = (found[0].endpoint, found[1].get("name", "")) if found else ("", "")
        if endpoint in _UI_NAMED:
            name = request.values.get("name", "")
        rule = self.watch.rule_for(name)
        if rule is None:
            return
        address = str(g.get("client_address", "") or request.remote_addr or "")
        refused = self.leases.refused(self.address_key(rule, address))
        if refused > 0:  # before the token is looked at: a refused flood costs nothing more
            raise self.refusal(rule, refused)
        account = self._authorizer.subject(_authorization(endpoint))
        body = 0
        if request.method in ("PUT", "PATCH", "POST") and endpoint in _PUSH_ENDPOINTS:
            if request.content_length:
                body = request.content_length if request.content_length <= self._max_body else 0
            elif request.headers.get("Transfer-Encoding"):
                body = -1
        wants = self.wants(rule, address, account, body)
        wait = self.leases.spend(wants)
        if wait > 0:
            raise self.refusal(rule, wait, wants)
        if body == -1:
            self._charge_after(wants)

    def _charge_after(self, wants: list[Want]) -> None:
        """A streamed body's bytes, charged once the view has read it (as debt the next body repays)."""
        environ = request.environ

        def charge(response: Any) -> Any:
            counted = environ.get(INPUT_KEY)
            received = float(counted.received) if counted is not None else 0.0
            for want in wants:
                if want.take == gpb.TokenBucket.DEBT and received > 1:
                    self.leases.charge(want.key, want.rate, want.burst, received - 1)  # 1 paid up front
            return response
        after_this_request(charge)


class LimitedHotReads:
    """The worker's hot-read path (services/api/hot_reads.py) under the rate limits: a hit is
    answered only when the leases already hold its tokens (no call on this path); anything else
    falls through to the application, which counts it (or refuses it) as any request."""

    def __init__(self, inner: Any, limiter: RateLimiter, trusted_proxies: tuple[Network, ...],
                 authorizer: Authorizer) -> None:
        self._inner = inner
        self._limiter = limiter
        self._trusted = trusted_proxies
        self._authorizer = authorizer
        # (path, peer, X-Forwarded-For, Authorization) -> the request's wants (None: no rule covers
        # it), under the rules they were worked out from: the same client reading the same manifest
        # again (most of this path's traffic) costs one lookup. A token's subject never changes
        # (authorization is still the inner path's own check, every time).
        self._policy: Policy | None = None
        self._known: dict[tuple[str, ...], list[Want] | None] = {}

    def _wants(self, environ: dict[str, Any], policy: Policy) -> list[Want] | None:
        path, peer, forwarded, authorization = parts = (
            environ.get("PATH_INFO", ""), environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR", ""),
            environ.get("HTTP_AUTHORIZATION", ""))
        key: tuple[str, ...] = parts
        if len(path) + len(peer) + len(forwarded) + len(authorization) > _MAX_MEMO_KEY:
            key = (hashlib.blake2b("\0".join(parts).encode(errors="replace"), digest_size=16).hexdigest(),)
        if policy is not self._policy:
            self._policy, self._known = policy, {}
        try:
            return self._known[key]
        except KeyError:
            pass
        found = routes.match(path)
        # The rule the application would count the request under (before_request): a route without
        # a repository (the /v2/ check) under the rule for the name "".
        rule = self._limiter.watch.rule_for(found[1].get("name", "")) if found else None
        wants = None
        if rule is not None:
            wants = self._limiter.wants(rule, client_address(peer, forwarded, self._trusted),
                                        self._authorizer.subject(authorization))
        if len(self._known) >= _MAX_RULE_MEMO:
            self._known.clear()
        self._known[key] = wants
        return wants

    def respond(self, environ: dict[str, Any]) -> Any:
        policy = self._limiter.watch.policy()
        if not policy.ratelimits:
            return self._inner.respond(environ)
        wants = self._wants(environ, policy)
        if wants is None:
            return self._inner.respond(environ)  # no rule covers it (or not a read this path answers)
        spent = self._limiter.leases.spend_local(wants)
        if spent is None:
            return None
        answer = self._inner.respond(environ)
        if answer is None:
            Leases.refund(wants, spent)
        return answer


def install(app: Flask, ctx: Context, trusted_proxies: tuple[Network, ...]) -> RateLimiter:
    """Registers the rate limits with the app (call it after the hook that sets the client
    address) and puts the worker's hot-read path under them."""
    limiter = RateLimiter(RuleFinder(ctx.policy.current), Leases(ctx.clients.governance.take_tokens),
                          ctx.authorizer, ctx.settings.ratelimit_lease, ctx.settings.max_body_bytes)
    app.before_request(limiter.before_request)
    hot = app.extensions.get("wharf.hot_reads")
    if hot is not None:
        app.extensions["wharf.hot_reads"] = LimitedHotReads(hot, limiter, trusted_proxies, ctx.authorizer)
    app.extensions["wharf.ratelimit"] = limiter
    return limiter
