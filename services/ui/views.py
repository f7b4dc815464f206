"""The web UI's pages (routes in services/api/routes.py, under ``/`` and ``/ui/``; see README.md here).

Every page reads through the gateway's own clients and authorizer: in token mode the visitor's
token (from the session) decides what the catalog shows (``Authorizer.pullable``), and a token
the auth service issues for the repository's scope decides whether a page may be read and a
delete made, checked with ``Authorizer.grants`` exactly as a request to the API would be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from flask import Response, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from services.api.request_input import FORM_MAX, read_form
from services.api.wire import UNREADABLE, why_unreadable
from services.common import digests, scopes
from services.common.errors import DENIED, NAME_INVALID, SIZE_INVALID, UNAUTHORIZED, UNSUPPORTED, RegistryError
from services.common.names import is_valid_name, is_valid_tag, validate_tag
from services.common.scopes import Scope
from services.common.yaml_section import human_size
from services.gen.wharf.auth.v1 import auth_pb2 as apb
from services.ui import image, listing
from services.ui import session as sessions
from services.ui.session import Session

if TYPE_CHECKING:
    from services.api.context import Context

log = logging.getLogger("wharf.ui")
_TAGS_PAGE = 100
# Tags a filtered repository page examines at most (pages of _TAGS_PAGE) before it offers "More
# tags" with fewer matches than a page: the filter searched only the first 100 tags before.
_FILTER_SCAN = 5000
_QUERY_MAX = 256
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("services.ui", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)



def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ms > 0 else "unknown"


_ENV.filters["size"] = human_size
_ENV.filters["when"] = _when
_ENV.globals["urlencode"] = urlencode


@dataclasses.dataclass
class Visitor:
    """Who is looking: the session (a fresh one when the request brought none) and its account."""

    session: Session
    subject: str = ""
    save_cookie: bool = False
    # The session came with the request (its CSRF token can match), renewed or not: a form loaded
    # before the access token expired was refused once (403) when the post renewed it.
    from_cookie: bool = False

    @property
    def signed_in(self) -> bool:
        return bool(self.session.token)


def _secure(ctx: Context) -> bool:
    return request.scheme == "https" or bool(ctx.settings.tls_cert_file)


def issue(ctx: Context, **fields: Any) -> apb.IssueTokenResponse:
    message = apb.IssueTokenRequest(service=ctx.settings.token_service,
                                    client_address=str(g.get("client_address") or request.remote_addr or ""),
                                    client_id="wharf-ui", **fields)
    return ctx.clients.auth.issue_token(message)


def _visitor(ctx: Context) -> Visitor:
    found = sessions.read_session(request)
    visitor = Visitor(found or sessions.new_session(), save_cookie=found is None, from_cookie=found is not None)
    if not ctx.authorizer.issues_tokens or not visitor.session.token:
        return visitor
    if not ctx.authorizer.adopt(visitor.session.token):
        # The token expired: renewed from the refresh token, else the session is over.
        try:
            renewed = issue(ctx, refresh_token=visitor.session.refresh)
        except RegistryError:
            return Visitor(sessions.new_session(), save_cookie=True)
        visitor.session = Session(visitor.session.sid, renewed.token, visitor.session.refresh)
        visitor.save_cookie = True
        if not ctx.authorizer.adopt(renewed.token):
            return Visitor(sessions.new_session(), save_cookie=True)
    visitor.subject = ctx.authorizer.subject("Bearer " + visitor.session.token)
    return visitor


def _rights(ctx: Context, visitor: Visitor, name: str) -> frozenset[str]:
    """What the visitor may do to the repository: the actions a token issued for its scope grants,
    as the API would judge that token (no auth: everything)."""
    if not ctx.authorizer.issues_tokens:
        return frozenset({"pull", "delete"})
    issued = issue(ctx, scopes=[f"repository:{name}:pull,delete"], refresh_token=visitor.session.refresh)
    return frozenset(action for action in ("pull", "delete")
                     if ctx.authorizer.grants("Bearer " + issued.token,
                                              [Scope(scopes.REPOSITORY, name, (action,))]))


def _registry_host(ctx: Context) -> str:
    return urlsplit(ctx.settings.public_url).netloc if ctx.settings.public_url else request.host


def render(ctx: Context, visitor: Visitor, template: str, status: int = 200, **values: Any) -> Response:
    body = _ENV.get_template(template).render(
        visitor=visitor, csrf=visitor.session.csrf, token_mode=ctx.authorizer.issues_tokens, **values)
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    if visitor.save_cookie:
        sessions.set_cookie(response, visitor.session, _secure(ctx))
    return sessions.secure_headers(response)


def _error(ctx: Context, visitor: Visitor, status: int, title: str, message: str) -> Response:
    return render(ctx, visitor, "error.html", status, title=title, message=message)


_TITLES = {400: "Bad request", 401: "Sign in needed", 403: "Not allowed", 404: "Not found",
           413: "Too large", 429: "Too many requests", 503: "The registry is unavailable"}


def page(view: Callable[..., Response]) -> Callable[..., Response]:
    """A UI view: the visitor is worked out first; a registry error becomes an error page."""

    @functools.wraps(view)
    def wrapper(ctx: Context, **params: str) -> Response:
        visitor = Visitor(sessions.new_session(), save_cookie=True)
        try:
            if request.method == "POST":
                read_form()
            visitor = _visitor(ctx)
            return view(ctx, visitor, **params)
        except RequestEntityTooLarge:
            g.error_code = SIZE_INVALID.code
            return _error(ctx, visitor, 413, _TITLES[413], f"a form of these pages is at most {FORM_MAX} bytes")
        except (*UNREADABLE, ClientDisconnected) as exc:  # malformed framing, a body cut short
            g.error_code = UNSUPPORTED.code  # as the API's forms (/token) say it
            return _error(ctx, visitor, 400, _TITLES[400], why_unreadable(exc))
        except RegistryError as err:
            g.error_code = err.error.code  # for the audit record of a form post (services/api/audit.py)
            status = err.http_status if err.http_status in _TITLES else 500
            answer = _error(ctx, visitor, status, _TITLES.get(status, "Error"), err.message)
            if "Retry-After" in err.headers:  # a throttled sign-in or a registry busy: when to try again
                answer.headers["Retry-After"] = err.headers["Retry-After"]
            return answer
        except Exception:
            log.exception("a web UI page failed", extra={"fields": {"request_id": g.get("request_id")}})
            return _error(ctx, visitor, 500, "Error", "something went wrong; the log has the details")
    return wrapper


def argument(name: str, default: str = "") -> str:
    return request.values.get(name, default)[:_QUERY_MAX]


def _deleted_reference() -> str:
    """The tag or digest a delete just took (the delete's redirect names it); anything else is
    not shown, so a crafted link cannot put a message of its choosing on the page."""
    reference = argument("deleted")
    if is_valid_tag(reference):
        return reference
    try:
        return digests.validate(reference)
    except RegistryError:
        return ""


def _repository_argument() -> str:
    name = argument("name")
    if not is_valid_name(name):
        raise RegistryError(NAME_INVALID, "not a valid repository name", http_status=400)
    return name


def _needs(rights: frozenset[str], action: str, name: str) -> None:
    if action not in rights:
        what = "read" if action == "pull" else action + " in"
        raise RegistryError(DENIED, f"you may not {what} {name} (or it does not exist)", http_status=403)


# -- the repositories page ---------------------------------------------------------------------

def _listing(ctx: Context, visitor: Visitor) -> dict[str, Any]:
    query, order, after = argument("q"), argument("sort", "name"), argument("after")
    order = order if order in listing.ORDERS else "name"
    found = listing.repositories(ctx, ctx.ui_catalog, query, order, after)
    return {"query": query, "order": order, "after": after, "page": found}


@page
def home(ctx: Context, visitor: Visitor) -> Response:
    if ctx.authorizer.issues_tokens and not visitor.signed_in:
        return _redirect("/ui/login")
    return render(ctx, visitor, "repositories.html", **_listing(ctx, visitor))


@page
def repository_list(ctx: Context, visitor: Visitor) -> Response:
    """The list alone, for the search box's script to put in place as the visitor types."""
    if ctx.authorizer.issues_tokens and not visitor.signed_in:
        raise RegistryError(DENIED, "sign in first", http_status=403)
    return render(ctx, visitor, "repository_list.html", **_listing(ctx, visitor))


# -- a repository ------------------------------------------------------------------------------

def _tag_row(ctx: Context, name: str, tag: str, digest: str, pushed: int, budget: list[int]) -> dict[str, Any]:
    """A tag's row. Its manifest is read (and summarized once per worker) only while the page's
    budget of manifest bytes lasts: past it, a row not seen before shows no size or platforms."""
    row: dict[str, Any] = {"tag": tag, "digest": digest, "pushed": pushed, "size": 0, "platforms": [],
                           "media_type": "", "known": False}
    found = image.SUMMARIES.get(name, digest) if digest else None
    if found is None:
        if budget[0] <= 0:
            return row
        try:
            manifest = ctx.clients.cache.get(name, digest or tag)
        except RegistryError:
            return row
        budget[0] -= len(manifest.content)
        found = image.summarize(manifest)
        image.SUMMARIES.put(name, found)
    row.update(digest=found.digest, media_type=found.media_type, size=found.size, platforms=list(found.platforms),
               known=True)
    return row


@page
def repository(ctx: Context, visitor: Visitor) -> Response:
    name = _repository_argument()
    rights = _rights(ctx, visitor, name)
    _needs(rights, "pull", name)
    after, wanted, order = argument("after"), argument("filter").lower(), argument("sort", "name")
    budget = [image.ROWS_READ_BUDGET]
    rows: list[dict[str, Any]] = []
    examined, more = 0, True
    while more and len(rows) < _TAGS_PAGE and examined < _FILTER_SCAN and (wanted or not examined):
        listed = ctx.clients.metadata.list_tags(name, after, _TAGS_PAGE, with_details=True)
        more = listed.more and bool(listed.names)
        for tag, digest, pushed in zip(listed.names, listed.digests, listed.pushed_at_ms, strict=False):
            if len(rows) == _TAGS_PAGE:
                more = True
                break
            after = tag
            if wanted in tag.lower():
                rows.append(_tag_row(ctx, name, tag, digest, pushed, budget))
        examined += len(listed.names)
    if order == "pushed":
        rows.sort(key=lambda r: (-r["pushed"], r["tag"]))
    elif order == "size":
        rows.sort(key=lambda r: (-r["size"], r["tag"]))
    next_after = after if more else ""
    return render(ctx, visitor, "repository.html", name=name, rows=rows, rights=rights, order=order,
                   filter=argument("filter"), next_after=next_after, host=_registry_host(ctx),
                   deleted=_deleted_reference())


# -- an image or index -------------------------------------------------------------------------

@page
def manifest(ctx: Context, visitor: Visitor) -> Response:
    name = _repository_argument()
    reference = argument("ref")
    if not digests.looks_like_digest(reference):
        validate_tag(reference)
    rights = _rights(ctx, visitor, name)
    _needs(rights, "pull", name)
    found = ctx.clients.cache.get(name, reference)
    parsed = image.parse(found.content)
    values: dict[str, Any] = {
        "name": name, "reference": reference, "digest": found.digest, "media_type": found.media_type,
        "rights": rights, "raw": image.pretty(found.content), "host": _registry_host(ctx),
        "is_index": found.media_type in image.INDEX_TYPES or "manifests" in parsed,
        "subject": str(image.parse(found.content).get("subject", {}).get("digest", ""))
        if isinstance(parsed.get("subject"), dict) else "",
        "artifact_type": str(parsed.get("artifactType", "")),
        "annotations": sorted((str(k), str(v)) for k, v in (parsed.get("annotations") or {}).items())
        if isinstance(parsed.get("annotations"), dict) else [],
        "referrers": image.referrers(ctx, name, found.digest),
    }
    if values["is_index"]:
        values["platforms"] = image.platforms(parsed)
    else:
        config_bytes = image.read_config(ctx, name, parsed)
        values["layers"] = image.layers(parsed)
        values["total"] = image.image_size(parsed)
        values["config"] = image.config_summary(image.parse(config_bytes)) if config_bytes else None
        values["config_raw"] = image.pretty(config_bytes) if config_bytes else ""
    return render(ctx, visitor, "manifest.html", **values)


# -- deleting ----------------------------------------------------------------------------------

def _delete_target() -> tuple[str, str]:
    name, reference = _repository_argument(), argument("ref")
    if digests.looks_like_digest(reference):
        digests.validate(reference)
    else:
        validate_tag(reference)
    return name, reference


@page
def delete(ctx: Context, visitor: Visitor) -> Response:
    """GET: the confirmation; POST (with the CSRF token, from this origin): the delete."""
    if request.method == "POST":
        _check_post(ctx, visitor)
    name, reference = _delete_target()
    _needs(_rights(ctx, visitor, name), "delete", name)
    if request.method == "GET":
        return render(ctx, visitor, "delete.html", name=name, reference=reference,
                       is_digest=digests.looks_like_digest(reference))
    if digests.looks_like_digest(reference):
        ctx.clients.metadata.delete_manifest(name, reference)
    else:
        ctx.clients.metadata.delete_tag(name, reference)
    ctx.ui_catalog.forget()  # the repository may have left the catalog
    log.info("deleted through the web UI", extra={"fields": {"repository": name, "reference": reference,
                                                             "account": visitor.subject}})
    response = _redirect("/ui/repository?" + urlencode({"name": name, "deleted": reference}))
    if visitor.save_cookie:  # a token renewed on the way: kept, so the next page need not renew it again
        sessions.set_cookie(response, visitor.session, _secure(ctx))
    return response


# -- signing in and out ------------------------------------------------------------------------

def _check_post(ctx: Context, visitor: Visitor) -> None:
    """A state-changing request must come from this origin and carry the session's CSRF token."""
    if not sessions.same_origin(request, ctx.settings.public_url) or \
            not sessions.csrf_ok(visitor.session if visitor.from_cookie else None, request.form.get("csrf", "")):
        raise RegistryError(DENIED, "this form did not come from this registry's pages (CSRF check failed); "
                                    "reload the page and try again", http_status=403)


@page
def login(ctx: Context, visitor: Visitor) -> Response:
    if not ctx.authorizer.issues_tokens:
        return _redirect("/")
    if request.method == "GET":
        return render(ctx, visitor, "login.html", failed=False, username="")
    _check_post(ctx, visitor)
    username, password = request.form.get("username", "")[:_QUERY_MAX], request.form.get("password", "")
    try:
        if not username:
            raise RegistryError(UNAUTHORIZED, "a user name is needed")
        issued = issue(ctx, username=username, password=password, offline=True)
    except RegistryError as err:
        if err.error is not UNAUTHORIZED:
            raise
        g.error_code = UNAUTHORIZED.code
        return render(ctx, visitor, "login.html", 403, failed=True, username=username)
    # A new session id at login: a fixed id planted before it is worth nothing after.
    fresh = sessions.new_session(issued.token, issued.refresh_token)
    response = _redirect("/")
    sessions.set_cookie(response, fresh, _secure(ctx))
    return response


@page
def logout(ctx: Context, visitor: Visitor) -> Response:
    """Signing out ends the session's refresh token in the auth service, not only the browser's
    cookie: a copy of the cookie (a shared machine, a proxy's log) is signed out too. Its access
    token lapses by itself, within WHARF_TOKEN_TTL."""
    _check_post(ctx, visitor)
    if visitor.session.refresh:
        with contextlib.suppress(RegistryError):  # the auth service away: the cookie goes all the same
            ctx.clients.auth.revoke_refresh_token(visitor.session.refresh)
    response = _redirect("/ui/login" if ctx.authorizer.issues_tokens else "/")
    sessions.clear_cookie(response, _secure(ctx))
    return response


_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}


def _suffix(file: str) -> str:
    return file[file.rfind("."):] if "." in file else ""


@functools.cache
def _static_files() -> dict[str, bytes]:
    """The files shipped in static/, read once. A request's file name is only looked up here: it
    reached the filesystem before (a name over 255 bytes was a 500 with a traceback logged per
    request) and every name asked for stayed in a cache that nothing bounded."""
    folder = resources.files("services.ui").joinpath("static")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir()
            if entry.is_file() and not entry.name.startswith(".") and _suffix(entry.name) in _STATIC_TYPES}


def static(ctx: Context, file: str) -> Response:
    """The UI's own CSS and script, shipped in the package (nothing is fetched from elsewhere)."""
    content = _static_files().get(file)
    if content is None:
        return sessions.secure_headers(Response(b"not found", status=404, content_type="text/plain"))
    response = Response(content, content_type=_STATIC_TYPES[_suffix(file)],
                        headers={"Cache-Control": "public, max-age=300"})
    sessions.secure_headers(response)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _redirect(location: str) -> Response:
    return sessions.secure_headers(Response(b"", status=303, headers={"Location": location}))
