"""Governance under a hostile review: rule values no reader can use, a client's request id naming
a quota hold, a stored rule later written into the policy file, and pushes while an operator
stores rules in a burst (services/common/governance.py, services/api/quotas.py,
services/metadata/policy.py). Against a real stack and a real Redis."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aredis
import requests

from services.api import policy as policy_cache
from services.common import digests
from services.common.errors import DENIED, UNAVAILABLE, RegistryError
from services.common.governance import Immutable, Policy
from services.metadata import policy as metadata_policy
from services.metadata.policy import VERSION, PolicyStore, StaleRules
from tests.support.stack import RunningStack


def admin(stack: RunningStack, *args: str) -> tuple[int, str]:
    result = stack.maintenance(*args)
    return result.returncode, result.stdout + result.stderr


def upload(stack: RunningStack, name: str, data: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", params={"digest": digests.of(data)}, data=data,
                         headers=headers or {}, timeout=30)


@pytest.fixture(scope="module")
def governed(start_stack: Callable[..., RunningStack]) -> RunningStack:
    return start_stack()


def test_rule_values_past_what_readers_hold_are_refused(governed: RunningStack) -> None:
    stack = governed
    # Before: stored; then every upload to team/ was 500 INTERNAL (the limit did not fit the
    # gRPC answer) and `wharf-admin usage` failed the same way.
    code, out = admin(stack, "quota", "set", "team", "99999999999999999999999GiB")
    assert code == 2 and "below 8 EiB" in out, out
    # Before: an OverflowError traceback.
    code, out = admin(stack, "quota", "set", "team", "9" * 400)
    assert code == 2 and "Traceback" not in out, out
    # Before: stored as Infinity; every retention run then failed with INTERNAL.
    code, out = admin(stack, "retention", "set", "ci/**", "--older-than", "9" * 400 + "d")
    assert code == 2 and "at most 100 years" in out, out
    code, out = admin(stack, "retention", "run", "--dry-run")
    assert code == 0, out
    code, out = admin(stack, "quota", "set", "big", str(2**63 - 1))
    assert code == 0, out
    code, out = admin(stack, "usage", "big", "--json")
    assert code == 0 and json.loads(out)[0]["limit"] == 2**63 - 1, out
    assert upload(stack, "big/app", b"fits").status_code == 201


def test_a_client_request_id_names_no_quota_hold(governed: RunningStack) -> None:
    stack = governed
    code, out = admin(stack, "quota", "set", "team", "1MiB")
    assert code == 0, out
    # A monolithic push into a namespace with a quota holds its bytes under an id of its own.
    # Before: "m-<X-Request-Id>": an id with a '.', which X-Request-Id allows, made it 400 as soon
    # as the gateway knew of the quota (within its 2 s refresh), so push for longer than that.
    deadline = time.monotonic() + 3 * policy_cache.REFRESH_SECONDS
    sent = 0
    while time.monotonic() < deadline:
        response = upload(stack, "team/app", f"held by a quota {sent}".encode(), {"X-Request-Id": "trace.1234"})
        assert response.status_code == 201, response.text
        sent += 1
        time.sleep(0.2)


def test_a_stored_rule_written_into_the_policy_file_leaves_the_gateways_their_rules(
        start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> None:
    stack = start_stack()
    assert admin(stack, "immutable", "set", "prod/**", "--tags", "v*")[0] == 0
    stack.stop()
    # The operator moves the rule into the policy file (GitOps), with a rate limit beside it.
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"immutable": [{"repositories": "prod/**", "tags": "v*"}],
                                  "ratelimits": [{"repositories": "limited/**", "requests_per_second": 1,
                                                  "burst": 1}]}))
    stack = start_stack(env={"WHARF_POLICY_FILE": str(policy)}, data_dir=stack.data_dir)
    # Before: every gateway's refresh failed ("a second rule for prod/**:v*"): no rate limit
    # applied, and `wharf-admin immutable list` died with a traceback.
    code, out = admin(stack, "immutable", "list")
    assert code == 0 and out.split() == ["file", "repositories=prod/**", "tags=v*"], out
    statuses = []
    for _ in range(20):
        statuses.append(requests.get(f"{stack.url}/v2/limited/x/tags/list", timeout=10).status_code)
        if 429 in statuses:
            break
    assert 429 in statuses, statuses
    # The shadowed stored rule can be removed (before: "in the policy file; remove it there",
    # and it came back the day the file's went); the file's stays.
    code, out = admin(stack, "immutable", "remove", "prod/**:v*")
    assert code == 0, out
    code, out = admin(stack, "immutable", "remove", "prod/**:v*")
    assert code != 0 and "policy file" in out, out
    assert "Traceback" not in stack.log_tail(200)


def test_pushes_while_rules_are_stored_in_a_burst_get_a_retryable_answer(redis_client: redis.Redis,
                                                                         redis_url: str) -> None:
    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        store = PolicyStore(client)
        tries = 0

        async def stale_while_rules_land(limit: int) -> str:
            nonlocal tries
            tries += 1
            if tries <= limit:
                await client.incr(VERSION)  # a rule stored between the reload and the script
                raise StaleRules()
            return "written"

        # Before: three tries, then 403 DENIED, which clients take as final (8 pushes in 150
        # while four `SetRule` loops ran).
        assert await store.guarded(lambda policy, version: stale_while_rules_land(5)) == "written"
        tries = 0
        with pytest.raises(RegistryError) as refused:
            await store.guarded(lambda policy, version: stale_while_rules_land(1000))
        assert refused.value.error is UNAVAILABLE and refused.value.detail == {"retry_after": 1}
        assert tries == metadata_policy.GUARD_ATTEMPTS
        await client.aclose()
    asyncio.run(scenario())


def test_a_stored_rule_the_file_shadows_can_be_removed(redis_client: redis.Redis, redis_url: str) -> None:
    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        await PolicyStore(client).set_rule("immutable", json.dumps({"repositories": "prod/**", "tags": "v*"}))
        shadowed = PolicyStore(client, Policy(immutable=(Immutable("prod/**", "v*"),)))
        policy, _ = await shadowed.current(fresh=True)
        assert [r.key for r in policy.immutable] == ["prod/**:v*"]
        await shadowed.remove_rule("immutable", "prod/**:v*")
        assert await client.hlen(metadata_policy.rules_key("immutable")) == 0
        with pytest.raises(RegistryError) as refused:
            await shadowed.remove_rule("immutable", "prod/**:v*")
        assert refused.value.error is DENIED
        await client.aclose()
    asyncio.run(scenario())


def test_a_rule_stored_before_the_bounds_is_ignored_not_enforced(redis_client: redis.Redis, redis_url: str) -> None:
    # A quota past int64 stored by a release without the bound: before, every upload to its
    # namespace was a 500 until an operator found and removed it; now the rule is left out
    # (with a warning in the log) and the other stored rules still hold.
    redis_client.hset(metadata_policy.rules_key("quota"), "team", json.dumps({"namespace": "team", "size": 10**32}))
    redis_client.hset(metadata_policy.rules_key("quota"), "other", json.dumps({"namespace": "other", "size": 10}))
    redis_client.incr(VERSION)

    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        policy, _ = await PolicyStore(client).current(fresh=True)
        assert policy.quota("team/app") is None and policy.quota("other/app") is not None
        assert Policy.from_json(policy.to_json()) == policy
        await client.aclose()
    asyncio.run(scenario())
