"""The registry API's routes as data: one table, matched in order.

Repository names contain "/", so Flask's converters cannot split
``/v2/<name>/blobs/<digest>`` reliably; each route is a regular expression over
the path instead, and the name is validated after matching (NAME_INVALID, not 404).
"""

from __future__ import annotations

import dataclasses
import re

# Loose on purpose: the views validate names, digests and tags and answer with
# the spec's error codes rather than a 404.
_NAME = r"(?P<name>[^?#]+?)"


@dataclasses.dataclass(frozen=True)
class Route:
    endpoint: str
    pattern: re.Pattern[str]
    methods: frozenset[str]


def _route(endpoint: str, regex: str, *methods: str) -> Route:
    return Route(endpoint, re.compile(f"^{regex}$"), frozenset({*methods, *(["HEAD"] if "GET" in methods else [])}))


ROUTES: tuple[Route, ...] = (
    _route("base", r"/v2/?", "GET"),
    _route("catalog", r"/v2/_catalog", "GET"),
    _route("tags", rf"/v2/{_NAME}/tags/list", "GET"),
    _route("uploads", rf"/v2/{_NAME}/blobs/uploads/?", "POST"),
    _route("upload", rf"/v2/{_NAME}/blobs/uploads/(?P<upload_id>[^/]+)", "GET", "PATCH", "PUT", "DELETE"),
    _route("blob", rf"/v2/{_NAME}/blobs/(?P<digest>[^/]+)", "GET", "DELETE"),
    _route("manifest", rf"/v2/{_NAME}/manifests/(?P<reference>[^/]+)", "GET", "PUT", "DELETE"),
    _route("referrers", rf"/v2/{_NAME}/referrers/(?P<digest>[^/]+)", "GET"),
)


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        found = route.pattern.match(path)
        if found:
            return route, found.groupdict()
    return None
