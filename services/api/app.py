"""Builds the Flask application: one dispatcher over the route table (routes.py), one error renderer."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, has_app_context, request
from werkzeug.routing import PathConverter

from services.api import http_metrics, ratelimit, routes
from services.api.access import authorizer_for
from services.api.admission import Admission
from services.api.audit import WriteAudit
from services.api.clients import Clients
from services.api.context import Context
from services.api.events import PullEvents, current_origin
from services.api.hot_reads import HotReads
from services.api.http_metrics import HttpMetrics
from services.api.limits import InFlightLimit
from services.api.mirroring import Mirror
from services.api.policy import PolicyCache
from services.api.responses import access_record, empty, request_id
from services.api.settings import GatewaySettings
from services.api.wire import UNREADABLE, why_unreadable
from services.common import metrics, tracing
from services.common.client_address import client_address, is_trusted, parse_networks
from services.common.errors import (
    INTERNAL,
    NAME_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    UNSUPPORTED,
    RegistryError,
    for_http,
)
from services.common.health import INSTANCE_HEADER
from services.common.logs import AccessLog
from services.common.names import is_valid_name
from services.mirror.config import Mirrors

log = logging.getLogger("wharf.gateway")
# An encoded "/" in the path would be decoded into a name separator: refuse it, never reinterpret it.
_ENCODED_SLASH_RE = re.compile(r"%2f", re.IGNORECASE)


class _AnyPath(PathConverter):
    """``path`` across newlines and from a leading "/" too: the route table judges every path under
    /v2/, so that a name with "%0A" or "/a" is NAME_INVALID like any other invalid name."""

    regex = "(?s:.+?)"
    part_isolating = False  # werkzeug would infer True from a regex without "/"


def _check_raw_path() -> None:
    """Refuses what the decoded path hides: ``%2F`` in the request line (``a/b%2Fc`` is not ``a/b/c``)."""
    raw = str(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or "")
    if _ENCODED_SLASH_RE.search(raw.split("?", 1)[0]):
        raise RegistryError(NAME_INVALID, "an encoded '/' (%2F) is not allowed in a repository name")


def _check_mount_source() -> None:
    """``from`` names a repository: validate it before it reaches a challenge header or a service.

    An empty ``from`` counts as absent (the spec lets a registry look for the blob in any
    repository the caller may pull), both here and in the upload view.
    """
    source = request.args.get("from", "")
    if source and request.args.get("mount") and not is_valid_name(source):
        raise RegistryError(NAME_INVALID, "the from parameter is not a valid repository name")


def _current_request_id() -> str:
    """The request's id; a fresh one for a call made outside any request (a background flush)."""
    return (str(g.get("request_id", "")) if has_app_context() else "") or uuid.uuid4().hex


def create_app(settings: GatewaySettings, clients: Clients | None = None, mirrors: Mirrors | None = None,
               pull_share: float = 0.0, admission: Admission | None = None) -> Flask:
    """The gateway's WSGI app. ``pull_share``: the share of pulls recorded as events (the events
    section's largest ``pull_sample``; 0 without endpoints that want pulls)."""
    trusted_proxies = parse_networks(settings.trusted_proxies)
    app = Flask("wharf")
    clients = clients or Clients(settings, _current_request_id, current_origin)
    ctx = Context(settings, clients, authorizer_for(settings, clients.auth), Mirror(mirrors or Mirrors(), clients),
                  PullEvents(pull_share, clients.metadata), admission or Admission(),
                  PolicyCache(clients.governance.policy))
    if ctx.authorizer.issues_tokens and not settings.public_url:
        log.warning("WHARF_PUBLIC_URL is not set: the token realm is built from each request's Host header; "
                    "set it to the registry's external URL")
    access_log = AccessLog("wharf.gateway")
    figures = HttpMetrics()
    # Every write and login, with its result, for the audit log (services/api/audit.py).
    WriteAudit(clients.governance, ctx.authorizer).attach(app)

    @app.before_request
    def _begin() -> None:
        g.request_id = request_id(request.headers.get("X-Request-Id", ""))
        g.started = time.perf_counter()
        peer = request.remote_addr or ""
        g.trusted_proxy = is_trusted(peer, trusted_proxies)
        g.client_address = client_address(peer, request.headers.get("X-Forwarded-For", ""), trusted_proxies)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if settings.instance_id and request.path in ("/v2", "/v2/"):
            response.headers[INSTANCE_HEADER] = settings.instance_id
        if settings.access_log:
            access_log.write("http", access_record(
                g.get("request_id", ""), request.method, request.path, response.status_code,
                g.get("started", time.perf_counter()), g.get("client_address", request.remote_addr or "")))
        return response

    @app.errorhandler(RegistryError)
    def _registry_error(err: RegistryError) -> Response:
        err = for_http(err)
        if err.error is RANGE_INVALID:  # an unsatisfiable read: 416 with Content-Range and no body
            return empty(416, {k: v for k, v in err.headers.items() if k != "Content-Type"})
        body = b"" if request.method == "HEAD" else err.body()
        response = Response(body, status=err.http_status, content_type="application/json", headers=err.headers)
        if request.method == "HEAD":
            response.headers["Content-Length"] = str(len(err.body()))
        return response

    @app.errorhandler(404)
    def _not_found(_: Exception) -> Response:
        return _registry_error(RegistryError(UNSUPPORTED, "no such endpoint", http_status=404))

    @app.errorhandler(405)
    def _not_allowed(_: Exception) -> Response:
        return _registry_error(RegistryError(UNSUPPORTED, "method not allowed on this endpoint"))

    def _unreadable(exc: Exception) -> Response:
        # A body that could not be read where a view reads it whole without saying what it was
        # (a form): the client's fault, said as such, not an internal error with its traceback.
        return _registry_error(RegistryError(UNSUPPORTED, why_unreadable(exc), http_status=400))

    for failure in UNREADABLE:
        app.register_error_handler(failure, _unreadable)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"fields": {"request_id": g.get("request_id")}})
        return _registry_error(RegistryError(INTERNAL))

    def dispatch(subpath: str = "") -> Response:
        found = routes.match(request.path)
        if found is None or (found[0].token_auth_only and not ctx.authorizer.issues_tokens):
            raise RegistryError(UNSUPPORTED, "no such endpoint", http_status=404)
        route, params = found
        _note_route(route.endpoint)
        _check_raw_path()
        if (request.content_length or 0) > settings.max_body_bytes:
            # Answered before a byte of the body is read: an impossible length is never waited on.
            raise RegistryError(SIZE_INVALID, f"a body of {request.content_length} bytes is over the limit of "
                                              f"{settings.max_body_bytes}", http_status=413)
        _check_transfer_coding()
        handler = route.handlers.get(request.method)
        if handler is None:
            raise RegistryError(UNSUPPORTED, f"{request.method} is not supported on this endpoint")
        if "name" in params and not is_valid_name(params["name"]):
            raise RegistryError(NAME_INVALID, f"invalid repository name {params['name'][:300]!r}")
        _check_mount_source()
        ctx.authorizer.authorize(handler.access.scopes(params), route.endpoint)
        _count_transfer(route.endpoint)
        return handler.view(ctx, **params)

    def _check_transfer_coding() -> None:
        """gunicorn passes a body coded ``gzip, chunked`` (or deflate, compress) on undecoded, and a
        registry that took it would store the compressed bytes as the blob: such a body is refused
        before it is read (RFC 9112, 6.1: 501 for a transfer coding not understood)."""
        coding = request.environ.get("HTTP_TRANSFER_ENCODING")
        if coding is not None and coding.strip(" \t").lower() != "chunked":
            raise RegistryError(UNSUPPORTED, f"transfer coding {coding[:100]!r} is not supported: send the body "
                                             "chunked or with a Content-Length", http_status=501)

    def _note_route(endpoint: str) -> None:
        """Tells the worker the route (its figures' label) and names the request's span after it."""
        request.environ[http_metrics.ROUTE_KEY] = endpoint
        if tracing.enabled():
            tracing.name_request(f"{request.method} {endpoint}", {"http.route": endpoint,
                                                                  "wharf.request_id": g.get("request_id", "")})

    def _count_transfer(endpoint: str) -> None:
        """A blob download, or an upload with a body, is a transfer; a body's bytes are counted."""
        if endpoint == "blob" and request.method == "GET":
            figures.begin_transfer(request.environ, "download")
        elif request.method in ("PUT", "PATCH", "POST") and (request.content_length or
                                                               request.headers.get("Transfer-Encoding")):
            figures.count_input(request.environ)
            if endpoint in ("upload", "uploads"):
                figures.begin_transfer(request.environ, "upload")

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    # No redirect of "//" to "/": "/v2//a" or "/v2/%2Fa" names "/a" (NAME_INVALID), not the repository "a".
    app.url_map.merge_slashes = False
    app.url_map.converters["anypath"] = _AnyPath
    # Every answer comes from the route table (routes.py), OPTIONS included: Flask's own OPTIONS
    # answered any path, unauthenticated and as HTML, with every method listed.
    for rule, endpoint in (("/v2/", "v2"), ("/v2/<anypath:subpath>", "registry"), ("/token", "token"),
                           ("/openapi.yaml", "openapi"),
                           ("/", "ui"), ("/ui/<anypath:subpath>", "ui_pages")):  # the web UI (services/ui)
        app.add_url_rule(rule, endpoint, dispatch, methods=methods, provide_automatic_options=False,
                         strict_slashes=rule != "/v2/")
    limit = InFlightLimit(app.wsgi_app, settings.max_in_flight)
    app.wsgi_app = limit  # type: ignore[method-assign]
    metrics.HTTP_IN_FLIGHT.set_function(lambda: limit.in_flight)
    # The worker records every request's figures with it (worker.py), once the answer is sent.
    app.extensions["wharf.http_metrics"] = figures
    # The worker answers read-cache hits with it before building a WSGI request (worker.py).
    app.extensions["wharf.hot_reads"] = HotReads(ctx, access_log if settings.access_log else None, trusted_proxies,
                                                 settings.instance_id)
    ratelimit.install(app, ctx, trusted_proxies)  # per account and address (issue 19); wraps the hot reads
    return app
