"""The gateway's part in the audit log (issue 19): every write and every login, with its result.

One ``after_request`` hook sees each answer once it is decided, whatever the view did: a write
that succeeded, one the authorizer refused (401, 403) and one that failed (a bad manifest, a
quota) are all recorded, from the request and the answer alone, so no view knows about auditing.
Recording costs a dictionary store; a background thread sends the records every second in
batches (services/api/batching.py) to the metadata service, which bounds and cleans every field
before it reaches Redis (services/metadata/audit.py). Nothing waits for it: a metadata service
that is slow or down delays or loses (logged) audit records, never a push.

What counts (the action names ``wharf-admin audit --action`` filters on):

====================  ==========================================================================
``upload``            a blob upload's commit (``PUT`` of a session, or a monolithic ``POST``
                      with ``digest``); a start or a chunk only when refused or failed
``mount``             a cross-repository mount (a mount that falls back to an upload is not one)
``cancel-upload``     ``DELETE`` of an upload session
``push``              a manifest ``PUT``: reference as sent, the digest and every tag in detail
``delete``            a manifest ``DELETE`` by digest
``untag``             a tag ``DELETE``
``delete-blob``       a blob ``DELETE``
``login``             ``/token`` with credentials: Basic on ``GET``, ``grant_type=password`` on
                      ``POST``; the account is the one attempted
``pull``              a read refused with ``403 DENIED`` only: a client pushing where it may not
                      is refused at its first look (skopeo and docker ``HEAD`` each blob first),
                      so this is where a denied push shows; a granted read is not recorded
====================  ==========================================================================

The web UI's forms (services/ui) are recorded by the same hook, from the form's fields: its delete
(``POST /ui/delete``) as ``delete`` (a digest) or ``untag`` (a tag), exactly like the API's
``DELETE``, and its sign-in (``POST /ui/login``) as a ``login`` of the account attempted; both with
detail ``web UI``. Their answers are HTML, so the UI leaves the error code in ``g.error_code``.

Not recorded: reads (but the denied ones); anonymous token requests (no credentials: nobody logs
in); and the redemption of a refresh token (``grant_type=refresh_token``), which docker does
before nearly every command: it is a token check of a login already recorded, and the issue asks
for logins, "not every token check". Revoking refresh tokens is an admin change, recorded by the
auth service.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from services.api import routes
from services.api.batching import Batcher
from services.api.wire import UNREADABLE
from services.common.errors import DENIED, INTERNAL, TOOMANYREQUESTS, UNAUTHORIZED, UNAVAILABLE
from services.gen.wharf.governance.v1 import governance_pb2 as gpb

if TYPE_CHECKING:
    from services.api.access import Authorizer
    from services.api.clients import GovernanceClient

log = logging.getLogger("wharf.gateway")

# Records kept between flushes (beyond it, records are dropped until the next flush), how
# often they are sent, and per call (the metadata service takes at most 1000 per call).
_RECORDS_MAX = 10_000
_FLUSH_EVERY = 1.0
_CHUNK = 500
# What is sent of client-supplied text (the metadata service cuts further and cleans).
_SENT_MAX = 1024
# A POST /token body read for the account name only when it is this small.
_FORM_MAX = 64 * 1024
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The code of an answer without a body (HEAD), by its status: those only one code answers with.
_CODE_OF_STATUS = {e.http_status: e.code for e in (UNAUTHORIZED, DENIED, TOOMANYREQUESTS, UNAVAILABLE, INTERNAL)}


def _cut(value: object) -> str:
    return str(value or "")[:_SENT_MAX]


def error_code(response: Response) -> str:
    """The registry error code of an error answer (``g.error_code``, which a view answering in HTML
    sets; else its ``{"errors": [...]}`` body, or for a HEAD its status), else "ERROR"."""
    if g.get("error_code"):
        return _cut(g.error_code)[:64]
    fallback = _CODE_OF_STATUS.get(response.status_code, "ERROR")
    if request.method == "HEAD" or response.is_streamed or (response.content_length or 0) > _FORM_MAX:
        return fallback
    try:
        errors = json.loads(response.get_data())["errors"]
        return str(errors[0]["code"])[:64]
    except (ValueError, KeyError, IndexError, TypeError):
        return fallback


def write_action(method: str, endpoint: str, params: dict[str, str], args: Any,
                 status: int) -> tuple[str, str, str] | None:
    """(action, reference, detail) for a write on a registry route (or a denied read), or None when
    it is not one to record (reads; an upload's successful start or chunk; a mount that became an
    upload)."""
    failed = status >= 400
    if endpoint == "uploads" and method == "POST":
        if args.get("mount") and args.get("from") is not None:
            if failed or status == 201:
                return "mount", _cut(args.get("mount")), f"from {_cut(args.get('from'))}"
            return None
        if args.get("digest"):
            return "upload", _cut(args.get("digest")), ""
        return ("upload", "", "start") if failed else None
    if endpoint == "upload":
        if method == "PUT":
            return "upload", _cut(args.get("digest")), ""
        if method == "DELETE":
            return "cancel-upload", "", ""
        return ("upload", "", "chunk") if method == "PATCH" and failed else None
    if endpoint == "blob" and method == "DELETE":
        return "delete-blob", _cut(params.get("digest")), ""
    if endpoint == "manifest":
        reference = _cut(params.get("reference"))
        if method == "PUT":
            return "push", reference, ""
        if method == "DELETE":
            return ("delete" if ":" in reference else "untag"), reference, ""
    if method in ("GET", "HEAD") and status == 403 and "name" in params:
        return "pull", _cut(params.get("reference") or params.get("digest") or ""), ""
    return None


def _form_field(name: str) -> str:
    """A field of the request's form, "" when its body cannot be read as one (malformed framing,
    a client gone, over the form size limit): the request was answered with that refusal, and its
    record says what was tried without the field, instead of failing with a traceback logged per
    such request."""
    try:
        return str(request.form.get(name, ""))
    except (*UNREADABLE, HTTPException, OSError):
        return ""


def ui_form_action(method: str, endpoint: str) -> tuple[str, str, str] | None:
    """(action, repository, reference) of a web UI form post to record, or None (anything else:
    the form is read only on the UI's own routes, whose bodies are small forms)."""
    if method != "POST":
        return None
    if endpoint == "ui_delete":
        reference = _cut(_form_field("ref"))
        return ("delete" if ":" in reference else "untag"), _cut(_form_field("name")), reference
    if endpoint == "ui_login":
        return "login", "", ""
    return None


def push_detail(response: Response, args: Any) -> str:
    """A manifest push's digest and the tags given as ``?tag=`` (OCI 1.1)."""
    parts = []
    digest = response.headers.get("Docker-Content-Digest", "")
    if digest:
        parts.append(f"digest {_cut(digest)}")
    tags = [_cut(t) for t in args.getlist("tag")[:32]]
    if tags:
        parts.append("tags " + ",".join(tags))
    return "; ".join(parts)[:_SENT_MAX]


def login_account() -> str | None:
    """The account a ``/token`` request tries to log in as ("" when its credentials cannot be
    read), or None when it is no login (anonymous, or a refresh token's redemption)."""
    if request.method == "GET":
        if not request.headers.get("Authorization", "").strip():
            return None
        auth = request.authorization
        return _cut(auth.username) if auth is not None and auth.type == "basic" else ""
    if request.method == "POST":
        if not 0 < (request.content_length or 0) <= _FORM_MAX:
            return None
        if _form_field("grant_type") != "password":
            return None
        return _cut(_form_field("username"))
    return None


class WriteAudit:
    """Registers the hook; keeps the records of this process until the background thread sends them."""

    def __init__(self, governance: GovernanceClient, authorizer: Authorizer) -> None:
        self._governance = governance
        self._authorizer = authorizer
        self._ids = itertools.count()
        self._pid = 0
        self._batch: Batcher[int, gpb.AuditRecord] = Batcher("audit", self._send, _FLUSH_EVERY, _RECORDS_MAX,
                                                             chunk=_CHUNK)

    def attach(self, app: Flask) -> None:
        app.after_request(self.after_request)

    def after_request(self, response: Response) -> Response:
        if request.method in _WRITES or request.path == "/token" or response.status_code == 403:
            try:
                record = self.describe(response)
            except Exception:
                log.exception("an audit record could not be made")
                record = None
            if record is not None:
                self.note(record)
        return response

    def describe(self, response: Response) -> gpb.AuditRecord | None:
        """The audit record of the request just answered, or None."""
        status = response.status_code
        repository = ""
        if request.path == "/token":
            account = login_account()
            if account is None:
                return None
            action, reference, detail = "login", "", ""
        else:
            found = routes.match(request.path)
            if found is None:
                return None
            route, params = found
            form = ui_form_action(request.method, route.endpoint)
            if form is not None:
                action, repository, reference = form
                detail = "web UI"
            else:
                described = write_action(request.method, route.endpoint, params, request.args, status)
                if described is None:
                    return None
                action, reference, detail = described
                if action == "push" and status < 400:
                    detail = push_detail(response, request.args)
                repository = _cut(params.get("name", ""))
            claims = g.get("claims")
            account = claims.subject if claims else self._authorizer.subject(request.headers.get("Authorization", ""))
            if action == "login":  # the web UI's sign-in: the account attempted
                account = _cut(_form_field("username"))
        return gpb.AuditRecord(
            at_ms=int(time.time() * 1000), account=account, account_kind="account" if account else "",
            address=_cut(g.get("client_address", "")), user_agent=_cut(request.headers.get("User-Agent", "")),
            action=action, repository=repository, reference=reference,
            result="ok" if status < 400 else error_code(response), status=status, detail=detail,
            request_id=_cut(g.get("request_id", "")), via="gateway")

    def note(self, record: gpb.AuditRecord) -> None:
        if self._pid != os.getpid():
            # gunicorn ends a worker with sys.exit: what this process holds is sent then.
            self._pid = os.getpid()
            atexit.register(self.flush)
        self._batch.add(next(self._ids), record)

    def flush(self) -> None:
        self._batch.flush()

    def _send(self, batch: dict[int, gpb.AuditRecord]) -> None:
        self._governance.record_audit([batch[key] for key in sorted(batch)])
