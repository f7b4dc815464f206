"""``?n=`` / ``?last=`` pagination of the tag list and the catalog, and its ``Link`` header."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Response, request

from services.api.responses import json_response
from services.common.errors import UNSUPPORTED, RegistryError
from services.common.names import MAX_NAME_LENGTH

# Without ?n= a listing is still bounded; the Link header leads on.
DEFAULT_PAGE = 10000


def page_args() -> tuple[int, str]:
    """(limit, last) from ?n= and ?last=; a malformed value is a 400 with a spec error code."""
    raw = request.args.get("n")
    last = request.args.get("last", "")
    if len(last) > MAX_NAME_LENGTH or not last.isprintable():
        raise RegistryError(UNSUPPORTED, "last must be a repository name or tag seen in an earlier page",
                            http_status=400)
    if raw is None or raw == "":
        return DEFAULT_PAGE, last
    if not raw.isdigit() or not raw.isascii():
        raise RegistryError(UNSUPPORTED, f"n must be a non-negative integer, not {raw[:20]!r}", http_status=400)
    return min(int(raw), DEFAULT_PAGE), last


def paged(key: str, payload: dict[str, object], names: list[str], more: bool, limit: int) -> Response:
    """The page as JSON; ``Link`` to the next page names the last entry of *this* page, which the
    caller has just been shown, so a cursor never reveals anything the page did not."""
    payload[key] = names
    headers = {}
    if more and names:
        headers["Link"] = f'<{request.path}?{urlencode({"n": limit, "last": names[-1]})}>; rel="next"'
    return json_response(payload, headers=headers)
