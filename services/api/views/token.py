"""GET and POST /token: the token endpoint of the Docker registry token specification.

GET takes HTTP Basic credentials (or none, for an anonymous token) and
``service``, ``scope`` (repeatable), ``offline_token``; POST is the OAuth2 form
that ``docker login`` uses (``grant_type=password`` or ``refresh_token``).
The auth service decides; this view only translates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from flask import Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.api.request_input import FORM_MAX, read_form
from services.api.responses import json_response
from services.common.errors import REQUEST_INVALID, SIZE_INVALID, UNAUTHORIZED, RegistryError
from services.gen.wharf.auth.v1 import auth_pb2 as apb

if TYPE_CHECKING:
    from services.api.context import Context

_TRUE = {"true", "1", "yes"}


@contextlib.contextmanager
def _challenged(ctx: Context) -> Iterator[None]:
    """A 401 here is a failed login: it names the scheme to log in with (RFC 9110 requires a
    challenge on every 401), Basic, as GET takes it."""
    try:
        yield
    except RegistryError as err:
        if err.error is UNAUTHORIZED:
            err.headers.setdefault("WWW-Authenticate", f'Basic realm="{ctx.settings.token_service}", charset="UTF-8"')
        raise


def _issue(ctx: Context, message: apb.IssueTokenRequest, oauth: bool) -> Response:
    message.client_address = str(g.get("client_address") or request.remote_addr or "")
    with _challenged(ctx):
        issued = ctx.clients.auth.issue_token(message)
    body: dict[str, object] = {"token": issued.token, "access_token": issued.token,
                               "expires_in": issued.expires_in, "issued_at": issued.issued_at}
    if issued.refresh_token:
        body["refresh_token"] = issued.refresh_token
    if oauth:
        body["scope"] = " ".join(issued.scopes)  # what was granted, not what was asked (RFC 6749, 5.1)
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def get_token(ctx: Context) -> Response:
    args = request.args
    message = apb.IssueTokenRequest(service=args.get("service", ""), scopes=args.getlist("scope"),
                                    offline=args.get("offline_token", "").lower() in _TRUE,
                                    client_id=args.get("client_id", ""))
    auth = request.authorization
    with _challenged(ctx):
        if auth is None and request.headers.get("Authorization", "").strip():
            # Credentials that cannot be decoded are a failed login, not an anonymous request.
            raise RegistryError(UNAUTHORIZED, "the token endpoint takes Basic credentials")
        if auth is not None:
            if auth.type != "basic" or not auth.username:
                raise RegistryError(UNAUTHORIZED, "the token endpoint takes Basic credentials")
            account = args.get("account")
            if account and account != auth.username:
                raise RegistryError(UNAUTHORIZED, "account does not match the credentials")
            message.username, message.password = auth.username, auth.password or ""
    return _issue(ctx, message, oauth=False)


def post_token(ctx: Context) -> Response:
    try:
        read_form()
    except RequestEntityTooLarge:
        raise RegistryError(SIZE_INVALID, f"a token request's form is at most {FORM_MAX} bytes",
                            http_status=413) from None
    form = request.form
    grant_type = form.get("grant_type", "")
    message = apb.IssueTokenRequest(service=form.get("service", ""), scopes=form.get("scope", "").split(),
                                    offline=form.get("access_type", "") == "offline",
                                    client_id=form.get("client_id", ""))
    if grant_type == "password":
        message.username, message.password = form.get("username", ""), form.get("password", "")
        if not message.username:
            raise RegistryError(REQUEST_INVALID, "grant_type=password needs username and password")
    elif grant_type == "refresh_token":
        message.refresh_token = form.get("refresh_token", "")
        if not message.refresh_token:
            raise RegistryError(REQUEST_INVALID, "grant_type=refresh_token needs refresh_token")
    else:
        raise RegistryError(REQUEST_INVALID, "grant_type must be password or refresh_token")
    return _issue(ctx, message, oauth=True)
