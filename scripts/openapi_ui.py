"""The web UI's operations in the OpenAPI document (services/ui): HTML pages and the forms that
change state. They are public in the API's terms (no bearer token): the UI authorizes with the
session cookie's token itself, through the gateway's authorizer."""

from __future__ import annotations

from typing import Any

from scripts.openapi_parts import COMMON_HEADERS

_HTML = {"text/html": {"schema": {"type": "string"}}}
_SEE_OTHER = {"description": "Done: on to the next page.", "headers": {
    **COMMON_HEADERS, "Location": {"description": "the next page", "schema": {"type": "string"}, "required": True}}}
_CSRF_NOTE = ("A form post: it must carry the session's `csrf` field and come from this origin (Origin, else "
              "Referer), else 403 and nothing changes.")


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "headers": dict(COMMON_HEADERS), "content": _HTML}


def _query(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "string"}}


def _op(route: str, op_id: str, summary: str, answers: dict[str, Any], description: str = "",
        parameters: list[Any] | None = None, form: list[str] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": op_id, "tags": ["web UI"], "summary": summary, "security": [{}]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if form:
        operation["requestBody"] = {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": form, "properties": {field: {"type": "string"} for field in form}}}}}
    errors = {"400": "A malformed name or reference.", "403": "Not allowed (or a failed CSRF check).",
              "404": "No such repository or manifest.", "500": "An unexpected error.",
              "503": "A backend service is unavailable.",
              "429": "A rate limit, or too many failed sign-ins (with Retry-After)."}
    if form:
        errors["413"] = "The form is over 64 KiB."
    operation["responses"] = {**answers, **{status: _page(text + " (an HTML error page)")
                                            for status, text in errors.items() if status not in answers}}
    operation["x-wharf-route"] = route
    return operation


def ui_paths() -> dict[str, Any]:
    listing = [_query("q", "only names containing this (case-insensitive)"),
               _query("sort", "`name` (default) or `pushed` (most recent first)"),
               _query("after", "the cursor: the last repository of the previous page")]
    repo = _query("name", "the repository", required=True)
    ref = _query("ref", "a tag or a digest", required=True)
    return {
        "/": {"get": _op("ui_home", "uiRepositories", "The repositories page", {"200": _page("The page."),
                         "303": _SEE_OTHER}, "In token mode, a visitor who is not signed in is sent to "
                         "/ui/login; the list holds only what the account may pull.", listing)},
        "/ui/repositories": {"get": _op("ui_repositories", "uiRepositoryList", "The repositories list alone",
                                        {"200": _page("The list, as the search box's script inserts it."),
                                         "403": _page("Not signed in (token mode).")}, parameters=listing)},
        "/ui/repository": {"get": _op("ui_repository", "uiRepository", "A repository's tags",
                                      {"200": _page("Tags with digest, size, platforms, push time; pull commands.")},
                                      parameters=[repo, _query("filter", "only tags containing this"),
                                                  _query("sort", "`name`, `pushed` or `size`"),
                                                  _query("after", "the last tag of the previous page")])},
        "/ui/manifest": {"get": _op("ui_manifest", "uiManifest", "An image, index or artifact",
                                    {"200": _page("Platforms, or layers, config, history; referrers; raw JSON.")},
                                    parameters=[repo, ref])},
        "/ui/delete": {
            "get": _op("ui_delete", "uiDeleteConfirm", "Confirm a delete",
                       {"200": _page("The confirmation form.")}, "Only for a visitor who may delete in the "
                       "repository.", [repo, ref]),
            "post": _op("ui_delete", "uiDelete", "Delete a tag or a manifest", {"303": _SEE_OTHER}, _CSRF_NOTE,
                        form=["csrf", "name", "ref"])},
        "/ui/login": {
            "get": _op("ui_login", "uiLoginForm", "The sign-in form", {"200": _page("The form."),
                                                                      "303": _SEE_OTHER},
                       "Without token auth there is no signing in: on to `/`."),
            "post": _op("ui_login", "uiLogin", "Sign in",
                        {"303": _SEE_OTHER, "403": _page("Wrong credentials, or a failed CSRF check.")},
                        _CSRF_NOTE + " Sets the session cookie (HttpOnly, SameSite=Strict, Secure over TLS).",
                        form=["csrf", "username", "password"])},
        "/ui/logout": {"post": _op("ui_logout", "uiLogout", "Sign out", {"303": _SEE_OTHER},
                                   _CSRF_NOTE + " Clears the session cookie.", form=["csrf"])},
        "/ui/usage": {"get": _op("ui_usage", "uiUsage", "Storage per namespace and repository; recent activity",
                                 {"200": _page("Bars per namespace (with the quota) or, with `namespace`, per "
                                               "repository; the newest audit records for admins.")},
                                 "In token mode only what the account may pull is counted or named; the "
                                 "activity section is for admins (accounts granted `registry:admin:*`). Without "
                                 "token auth everything is shown.",
                                 [_query("namespace", "one namespace's repositories")])},
        "/ui/activity": {"get": _op("ui_activity", "uiActivity", "The audit log, newest first",
                                    {"200": _page("A page of audit records."),
                                     "403": _page("Not an admin (token mode), or not signed in.")},
                                    "Admins only in token mode; everyone without token auth.",
                                    [_query("after", "the cursor: the previous page's `next`")])},
        "/ui/static/{file}": {"get": _op("ui_static", "uiStatic", "The UI's stylesheet and script", {
            "200": {"description": "The file.", "headers": dict(COMMON_HEADERS),
                    "content": {"text/css": {"schema": {"type": "string"}},
                                "text/javascript": {"schema": {"type": "string"}}}},
            # No such file: a plain "not found"; a name outside the route's pattern is no route at
            # all, answered like any unknown path (the error envelope, UNSUPPORTED).
            "404": {"description": "No such file.", "headers": dict(COMMON_HEADERS),
                    "content": {"text/plain": {"schema": {"type": "string"}},
                                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}},
            parameters=[{"name": "file", "in": "path", "required": True, "description": "ui.css or ui.js",
                         "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"}}])},
    }
