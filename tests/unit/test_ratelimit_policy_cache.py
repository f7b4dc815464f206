"""The gateway's policy cache (services/api/policy.py) when its first fetch of the rules fails: the
worker must not go a whole refresh without its rate limits."""

from __future__ import annotations

import time

from services.api.policy import PolicyCache
from services.common.errors import UNAVAILABLE, RegistryError
from services.common.governance import parse_document
from services.gen.wharf.governance.v1 import governance_pb2 as gpb

RULES = parse_document({"ratelimits": [{"repositories": "limited/**", "requests_per_second": 2, "burst": 10}]})


def test_a_failed_first_fetch_is_retried_long_before_the_refresh() -> None:
    answers: list[RegistryError | gpb.Policy] = [RegistryError(UNAVAILABLE, "starting"),
                                                  gpb.Policy(document=RULES.to_json(), version=1)]
    calls: list[float] = []

    def fetch() -> gpb.Policy:
        calls.append(time.monotonic())
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, RegistryError):
            raise answer
        return answer

    cache = PolicyCache(fetch, every=30.0)
    assert not cache.current().ratelimits and not cache.loaded  # the first fetch failed: no rules yet
    deadline = time.monotonic() + 5
    while not cache.loaded and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cache.loaded and cache.current().ratelimits == RULES.ratelimits
    assert calls[1] - calls[0] < 2  # retried within a fraction of a second, not after the 30 s refresh


def test_once_known_the_rules_are_refreshed_at_the_usual_pace() -> None:
    calls: list[float] = []

    def fetch() -> gpb.Policy:
        calls.append(time.monotonic())
        return gpb.Policy(document=RULES.to_json(), version=1)

    cache = PolicyCache(fetch, every=30.0)
    assert cache.current().ratelimits == RULES.ratelimits and cache.loaded
    time.sleep(0.5)
    assert len(calls) == 1
