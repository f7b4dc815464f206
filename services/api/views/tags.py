"""GET /v2/<name>/tags/list with n/last pagination."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from flask import Response, request

from services.api.http import json_response
from services.common.errors import PAGINATION_NUMBER_INVALID, RegistryError

if TYPE_CHECKING:
    from services.api.app import Context

# Without ?n= a listing is still bounded; the Link header leads on.
DEFAULT_PAGE = 10000


def page_args() -> tuple[int, str, bool]:
    """(limit, last, n_given) from ?n= and ?last=."""
    raw = request.args.get("n")
    last = request.args.get("last", "")
    if raw is None or raw == "":
        return DEFAULT_PAGE, last, False
    if not raw.isdigit():
        raise RegistryError(PAGINATION_NUMBER_INVALID, f"n must be a non-negative integer, not {raw[:20]!r}")
    return min(int(raw), DEFAULT_PAGE), last, True


def paged(path: str, key: str, payload: dict[str, object], names: list[str], more: bool, limit: int,
          last_seen: str = "") -> Response:
    payload[key] = names
    headers = {}
    last_seen = last_seen or (names[-1] if names else "")
    if more and last_seen:
        headers["Link"] = f'<{path}?{urlencode({"n": limit, "last": last_seen})}>; rel="next"'
    return json_response(payload, headers=headers)


def list_tags(ctx: Context, name: str) -> Response:
    limit, last, _ = page_args()
    result = ctx.clients.metadata.list_tags(name, last, limit)
    return paged(request.path, "tags", {"name": name}, list(result.names), result.more, limit)
