"""A hostile review of rate limits (2026-12-03): what a gateway worker remembers per request on the
hot-read path must not be the client's headers. Before: every GET or HEAD (a read-cache hit or not)
left its path, X-Forwarded-For and Authorization in a memo of 4,096 entries, and a client sending
4 KiB paths and 8 KiB headers grew each worker by ~76 MB in 8,400 requests (measured on a stack:
58 MB to 135 MB of RSS per worker); the rule memo kept each 4 KiB name as well."""

from __future__ import annotations

import sys
from typing import Any

from services.api.leases import Leases
from services.api.ratelimit import LimitedHotReads, RateLimiter, RuleFinder
from services.common.governance import parse_document

POLICY = parse_document({"ratelimits": [{"repositories": "**", "requests_per_second": 5, "burst": 10}]})


class NoAccess:
    def subject(self, authorization: str) -> str:
        return ""


class NoHits:
    def respond(self, environ: dict[str, Any]) -> None:
        return None


def _size(memo: dict[Any, Any]) -> int:
    return sum(sys.getsizeof(part) for key in memo for part in (key if isinstance(key, tuple) else (key,)))


def test_hostile_headers_are_not_kept_by_the_hot_read_memos() -> None:
    watch = RuleFinder(lambda: POLICY)
    limiter = RateLimiter(watch, Leases(lambda buckets, timeout=None: []), NoAccess(), 0.1)  # type: ignore[arg-type]
    hot = LimitedHotReads(NoHits(), limiter, (), NoAccess())  # type: ignore[arg-type]
    for i in range(1000):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/" + "a" * 3900 + f"{i}/manifests/latest",
                   "REMOTE_ADDR": "192.0.2.9", "HTTP_X_FORWARDED_FOR": "1" * 8000 + str(i),
                   "HTTP_AUTHORIZATION": "Bearer " + "x" * 8000 + str(i)}
        assert hot.respond(environ) is None
    assert _size(hot._known) < 200_000  # was ~20 MB: 1,000 keys of ~20 KB each
    assert _size(watch._state[1]) < 10_000  # was ~4 MB: 1,000 names of ~4 KB
    # An ordinary request is still remembered as it is, and the overlong one still counted under "**".
    ordinary = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/team/app/manifests/v1", "REMOTE_ADDR": "192.0.2.9"}
    hot.respond(ordinary)
    assert ("/v2/team/app/manifests/v1", "192.0.2.9", "", "") in hot._known
    assert all(wants for wants in hot._known.values())
