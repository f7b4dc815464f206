"""The hottest reads answered from the read cache before any WSGI request exists.

A manifest GET or HEAD and a blob HEAD are most of a registry's requests (every pull starts
with them, and pushers HEAD every layer), with the ``/v2/`` version check before each; a
repository's tag list (without ``n``/``last``) is what tag-polling clients ask over and over. When
the read cache holds the answer, what is left of such a request is the framework: building
Flask's request context, its hooks and its response object cost about as much as the HTTP
parsing itself. The gateway's worker (worker.py) hands each parsed GET and HEAD to
:meth:`HotReads.respond` and writes a hit's answer itself; the answer has the same headers the
views send (it builds them with the views' own functions), the same route table (with its
access rule per method) and the same authorizer.

It never answers anything else, and never an error: a miss, a body, a conditional request, an
encoded character in the path, a missing or insufficient token, an Accept header that refuses
the manifest's type — all of those fall through to the Flask application unchanged, which
answers as always. A hit implies the name and reference were valid, because only what the full
path fetched is cached.
"""

from __future__ import annotations

import json
import time
from typing import Any

from services.api import routes
from services.api.context import Context
from services.api.pagination import DEFAULT_PAGE
from services.api.read_cache import page_key
from services.api.responses import access_record, request_id
from services.api.views.base import PING as _PING
from services.api.views.blobs import blob_headers
from services.api.views.manifests import accepts, manifest_headers
from services.common.client_address import Network, client_address
from services.common.digests import looks_like_digest
from services.common.health import INSTANCE_HEADER
from services.common.logs import AccessLog

_API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
# What the Accept negotiation decided, per (Accept header, media type): clients send a handful
# of distinct headers, so this stays small; it is cleared should it ever grow past the bound.
_ACCEPTS_MEMO_MAX = 1024


class HotReads:
    def __init__(self, ctx: Context, access_log: AccessLog | None, trusted_proxies: tuple[Network, ...],
                 instance_id: str = "") -> None:
        self._cache = ctx.clients.cache
        self._instance = [(INSTANCE_HEADER, instance_id)] if instance_id else []
        self._authorizer = ctx.authorizer
        self._mirror = ctx.mirror
        self._pulls = ctx.pull_events
        self._access_log = access_log
        self._trusted = trusted_proxies
        self._accepts: dict[tuple[str, str], bool] = {}

    def respond(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """A hit's route and whole answer (its headers, request id included, and body), logged;
        None for anything else (which the worker then serves through Flask, as always)."""
        method = environ["REQUEST_METHOD"]
        if method != "GET" and method != "HEAD":
            return None
        started = time.perf_counter()
        answer = self._answer(environ, method)
        if answer is None:
            return None
        route, headers, body = answer
        rid = request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        if "wharf.pulled" in environ:
            self._note_pull(environ, rid, *environ["wharf.pulled"])
        headers.append(_API_VERSION)
        headers.append(("X-Request-Id", rid))
        if self._access_log is not None:
            remote = client_address(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR", ""),
                                    self._trusted)
            self._access_log.write("http", access_record(rid, method, environ.get("PATH_INFO", ""), 200, started,
                                                         remote))
        return route, headers, body

    def _answer(self, environ: dict[str, Any], method: str) -> tuple[str, list[tuple[str, str]], bytes] | None:
        if environ.get("CONTENT_LENGTH") not in (None, "", "0") or "HTTP_TRANSFER_ENCODING" in environ \
                or "HTTP_IF_NONE_MATCH" in environ:
            return None  # a body, or a conditional request (the views answer 304)
        raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
        if "%" in raw.split("?", 1)[0]:
            return None  # the full path decides what an encoded character means
        found = routes.match(environ.get("PATH_INFO", ""))
        if found is None:
            return None
        route, params = found
        if route.endpoint == "manifest":
            if self._mirror.enabled and not self._mirror.is_fresh_tag(params["name"], params["reference"]):
                return None  # a mirrored tag due for revalidation: the view asks the upstream
            manifest = self._cache.cached(params["name"], "manifest", params["reference"])
            if manifest is None or not self._allowed(environ, route.handlers[method], params) \
                    or not self._accepted(environ.get("HTTP_ACCEPT", ""), manifest.media_type):
                return None
            if self._mirror.enabled:
                self._mirror.note_pull(params["name"], manifest.digest)  # for eviction; no call here
            if method == "GET" and self._pulls.enabled and self._pulls.sampled():
                environ["wharf.pulled"] = (params, manifest)  # recorded once the request id is known
            headers = manifest_headers(manifest)
            headers["Content-Length"] = str(len(manifest.content))
            return route.endpoint, list(headers.items()), b"" if method == "HEAD" else manifest.content
        if route.endpoint == "base":
            # The API version check every client starts a pull or push with (docker, containerd
            # and podman send it before each): thousands at once when a node pool scales up.
            if not self._allowed(environ, route.handlers[method], params):
                return None  # the full path challenges
            return route.endpoint, [("Content-Type", "application/json"), ("Content-Length", str(len(_PING))),
                                    *self._instance], b"" if method == "HEAD" else _PING
        if route.endpoint == "tags" and method == "GET" and "?" not in raw:
            # A repository's whole tag list (one page): what tag-polling clients (CI, bots, `skopeo
            # list-tags`) ask over and over. Through Flask it was ~0.2x Distribution's rate.
            page = self._cache.cached(params["name"], "tags", page_key(DEFAULT_PAGE, ""))
            if page is None or page[1] or not self._allowed(environ, route.handlers[method], params):
                return None  # a miss, or more than a page (the view writes the Link header)
            body = json.dumps({"name": params["name"], "tags": list(page[0])}).encode()
            return route.endpoint, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body
        if route.endpoint == "blob" and method == "HEAD":
            size = self._cache.cached(params["name"], "blob", params["digest"])
            if size is None or not self._allowed(environ, route.handlers[method], params):
                return None
            return route.endpoint, list(blob_headers(params["digest"], int(size)).items()), b""
        return None

    def _note_pull(self, environ: dict[str, Any], rid: str, params: dict[str, str], manifest: Any) -> None:
        """A pull event for a hit (sampled; batched: no call here)."""
        reference = params["reference"]
        self._pulls.note(environ, self._authorizer.subject(environ.get("HTTP_AUTHORIZATION", "")),
                         client_address(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR", ""),
                                        self._trusted), rid, params["name"], manifest.digest, manifest.media_type,
                         len(manifest.content), "" if looks_like_digest(reference) else reference)

    def _allowed(self, environ: dict[str, Any], handler: routes.Handler, params: dict[str, str]) -> bool:
        return self._authorizer.grants(environ.get("HTTP_AUTHORIZATION", ""), handler.access.scopes(params))

    def _accepted(self, accept: str, media_type: str) -> bool:
        key = (accept, media_type)
        decided = self._accepts.get(key)
        if decided is None:
            if len(self._accepts) >= _ACCEPTS_MEMO_MAX:
                self._accepts.clear()
            decided = self._accepts[key] = accepts([accept] if accept else [], media_type)
        return decided
