"""The gateway's routes as data: one table, each route with its pattern, and for each method
the view that serves it and the access it needs.

Repository names contain "/", so Flask's converters cannot split
``/v2/<name>/blobs/<digest>`` reliably; each route is a regular expression over the path
instead, matched in order, and the name is validated after matching (NAME_INVALID, not 404).
A method a route does not list is ``405 UNSUPPORTED``; HEAD is listed wherever it is
served (a GET view answers HEAD too: Flask drops the body). The dispatcher (app.py) and the
hot-read path (hot_reads.py) both read this table, so a route's rules live in one place.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

from flask import Response

from services.api.views import base, blobs, catalog, manifests, openapi, referrers, tags, token, uploads
from services.common import scopes
from services.common.scopes import Scope
from services.ui import usage as ui_usage
from services.ui import views as ui

View = Callable[..., Response]
# Loose on purpose: the views validate names, digests and tags and answer with
# the spec's error codes rather than a 404. Any character, so that a name with a decoded
# "%3F" or "%23" (or a newline) is NAME_INVALID like any other invalid name.
_NAME = r"(?P<name>(?s:.+?))"


@dataclasses.dataclass(frozen=True)
class Access:
    """What a request must be granted in token mode. ``actions`` on the repository the path
    names; on the registry's catalog; any valid token (no scope); or nothing at all."""

    kind: str  # "repository", "catalog", "token" or "public"
    actions: tuple[str, ...] = ()

    def scopes(self, params: Mapping[str, str]) -> list[Scope] | None:
        """The scopes a token must grant; an empty list means any valid token, None no token."""
        if self.kind == "public":
            return None
        if self.kind == "catalog":
            return [Scope(scopes.REGISTRY, scopes.CATALOG, self.actions)]
        if self.kind == "repository":
            return [Scope(scopes.REPOSITORY, params["name"], self.actions)]
        return []


PULL = Access("repository", ("pull",))
PUSH = Access("repository", ("pull", "push"))
DELETE = Access("repository", ("delete",))
CATALOG = Access("catalog", ("*",))
ANY_TOKEN = Access("token")
PUBLIC = Access("public")


@dataclasses.dataclass(frozen=True)
class Handler:
    view: View
    access: Access


@dataclasses.dataclass(frozen=True)
class Route:
    endpoint: str
    pattern: re.Pattern[str]
    handlers: Mapping[str, Handler]
    # Served only where tokens are issued (the /token endpoint): elsewhere a 404.
    token_auth_only: bool = False


def _route(endpoint: str, regex: str, handlers: dict[str, Handler], token_auth_only: bool = False) -> Route:
    return Route(endpoint, re.compile(regex), handlers, token_auth_only)


def _read(view: View, access: Access) -> dict[str, Handler]:
    """GET and HEAD served by one view."""
    return {"GET": Handler(view, access), "HEAD": Handler(view, access)}


ROUTES: tuple[Route, ...] = (
    _route("base", r"/v2/?", _read(base.ping, ANY_TOKEN)),
    _route("catalog", r"/v2/_catalog", _read(catalog.list_repositories, CATALOG)),
    _route("tags", rf"/v2/{_NAME}/tags/list", _read(tags.list_tags, PULL)),
    _route("uploads", rf"/v2/{_NAME}/blobs/uploads/?", {"POST": Handler(uploads.start, PUSH)}),
    _route("upload", rf"/v2/{_NAME}/blobs/uploads/(?P<upload_id>[^/]+)", {
        **_read(uploads.status, PUSH), "PATCH": Handler(uploads.patch, PUSH), "PUT": Handler(uploads.finish, PUSH),
        "DELETE": Handler(uploads.cancel, PUSH)}),
    _route("blob", rf"/v2/{_NAME}/blobs/(?P<digest>[^/]+)", {
        "GET": Handler(blobs.get, PULL), "HEAD": Handler(blobs.head, PULL), "DELETE": Handler(blobs.delete, DELETE)}),
    _route("manifest", rf"/v2/{_NAME}/manifests/(?P<reference>[^/]+)", {
        **_read(manifests.get, PULL), "PUT": Handler(manifests.put, PUSH),
        "DELETE": Handler(manifests.delete, DELETE)}),
    _route("referrers", rf"/v2/{_NAME}/referrers/(?P<digest>[^/]+)", _read(referrers.list_referrers, PULL)),
    _route("token", r"/token", {**_read(token.get_token, PUBLIC), "POST": Handler(token.post_token, PUBLIC)},
           token_auth_only=True),
    # The API's own description (docs/openapi.yaml): public, as the token endpoint is.
    _route("openapi", r"/openapi\.yaml", _read(openapi.document, PUBLIC)),
    # The web UI (services/ui): public here, because its pages authorize with the session's token
    # themselves, through the same authorizer; names come in the query, so one route serves all.
    _route("ui_home", r"/", {"GET": Handler(ui.home, PUBLIC)}),
    _route("ui_repositories", r"/ui/repositories", {"GET": Handler(ui.repository_list, PUBLIC)}),
    _route("ui_repository", r"/ui/repository", {"GET": Handler(ui.repository, PUBLIC)}),
    _route("ui_manifest", r"/ui/manifest", {"GET": Handler(ui.manifest, PUBLIC)}),
    _route("ui_delete", r"/ui/delete", {"GET": Handler(ui.delete, PUBLIC), "POST": Handler(ui.delete, PUBLIC)}),
    _route("ui_login", r"/ui/login", {"GET": Handler(ui.login, PUBLIC), "POST": Handler(ui.login, PUBLIC)}),
    _route("ui_logout", r"/ui/logout", {"POST": Handler(ui.logout, PUBLIC)}),
    _route("ui_usage", r"/ui/usage", {"GET": Handler(ui_usage.usage, PUBLIC)}),
    _route("ui_activity", r"/ui/activity", {"GET": Handler(ui_usage.activity, PUBLIC)}),
    _route("ui_static", r"/ui/static/(?P<file>[a-z0-9][a-z0-9._-]*)", {"GET": Handler(ui.static, PUBLIC)}),
)


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found:
            return route, found.groupdict()
    return None
