"""Governance rules a hostile review found accepted or unreadable (services/common/governance.py),
the id a one-request upload holds quota under (services/api/quotas.py), and retention's plan for
manifests pushed again (services/metadata/retention_plan.py). No sockets."""

from __future__ import annotations

import collections
import json
import math
import random
import re
import time

import pytest

from services.api import quotas as gateway_quotas
from services.common import governance
from services.common.governance import Immutable, Policy, PolicyError, Quota, RateLimit, Retention, parse_rule
from services.metadata import quotas as metadata_quotas
from services.metadata.retention_plan import Manifest, untagged_to_delete

NOW = 1_000_000_000_000
DAY_MS = 86_400_000


@pytest.mark.parametrize("kind, rule", [
    # A quota past int64: stored, then every upload to the namespace (and `wharf-admin usage`) was
    # a 500 INTERNAL, the limit no longer fitting the gRPC answer.
    ("quota", {"namespace": "team", "size": 10**32}),
    ("quota", {"namespace": "team", "size": "99999999999999999999999GiB"}),
    ("quota", {"namespace": "team", "size": 2**63}),
    # More digits than a float holds: an OverflowError traceback out of wharf-admin.
    ("quota", {"namespace": "team", "size": "9" * 400}),
    ("ratelimit", {"repositories": "**", "requests_per_second": 1, "push_bytes_per_second": "9" * 400}),
    # An endless duration (the CLI's '999...9d' is a float infinity; JSON and YAML spell it too):
    # stored as JSON's Infinity, then every retention run failed with INTERNAL (OverflowError).
    ("retention", {"repositories": "ci/**", "older_than": "9" * 400 + "d"}),
    ("retention", {"repositories": "ci/**", "older_than": math.inf}),
    ("retention", {"repositories": "ci/**", "untagged_older_than": 10**400}),
    ("retention", {"repositories": "ci/**", "untagged_older_than": math.nan}),
    # NaN slipped past "<= 0 or > 2^53".
    ("ratelimit", {"repositories": "**", "requests_per_second": math.nan}),
])
def test_values_no_reader_can_use_are_refused(kind: str, rule: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        parse_rule(kind, rule)


def test_the_largest_values_still_work() -> None:
    assert parse_rule("quota", {"namespace": "team", "size": 2**63 - 1}) == Quota("team", 2**63 - 1)
    assert parse_rule("retention", {"repositories": "ci/**", "older_than": "36500d"}).key == "ci/**"
    assert parse_rule("ratelimit", {"repositories": "**", "requests_per_second": 2**53, "burst": 10}).key == "**"


def test_a_stored_rule_also_in_the_file_leaves_the_effective_policy_readable() -> None:
    # An operator moves stored rules into the policy file (GitOps) and restarts. Before: the
    # effective policy named each such rule twice, every gateway's refresh failed on it ("a second
    # rule for ..."), so no gateway had any rule (rate limits off, no quota holds), and
    # `wharf-admin <kind> list` died with a traceback.
    file = Policy(immutable=(Immutable("prod/**", "v*"),), quotas=(Quota("team", 10),),
                  retention=(Retention("ci/**", keep_last=3),), ratelimits=(RateLimit("limited/**", 1.0, 1),))
    stored = Policy(immutable=(Immutable("prod/**", "v*"), Immutable("other/**")), quotas=(Quota("team", 99),),
                    retention=(Retention("ci/**", keep_last=9),), ratelimits=(RateLimit("limited/**", 50.0, 50),))
    effective = file.then(stored)
    read = Policy.from_json(effective.to_json())
    assert read == effective
    assert [r.key for r in read.immutable] == ["prod/**:v*", "other/**:*"]
    # The file's rule wins.
    assert read.quota("team/app") == Quota("team", 10)
    assert read.retention_rule("ci/app") == Retention("ci/**", keep_last=3)
    assert read.ratelimit("limited/x") == RateLimit("limited/**", 1.0, 1)


def test_an_effective_policy_of_a_full_file_and_full_stored_rules_reads_back() -> None:
    # Each source may hold MAX_RULES per kind; before, their sum (past MAX_RULES) was unreadable
    # to the gateways and to `wharf-admin list`.
    file = Policy(immutable=tuple(Immutable(f"file{i}/**") for i in range(governance.MAX_RULES)))
    stored = Policy(immutable=tuple(Immutable(f"stored{i}/**") for i in range(governance.MAX_RULES)))
    document = file.then(stored).to_json()
    assert len(json.loads(document)["immutable"]) == 2 * governance.MAX_RULES
    assert len(Policy.from_json(document).immutable) == 2 * governance.MAX_RULES
    # A policy file itself stays bounded.
    with pytest.raises(PolicyError, match="at most"):
        governance.parse_document({"immutable": [{"repositories": f"r{i}/**"} for i in range(1001)]})


def test_a_one_request_uploads_hold_id_is_its_own_and_always_valid() -> None:
    # Before: "m-<X-Request-Id>", the client's choice: an id with a '.' (which X-Request-Id
    # allows) made every monolithic push into a namespace with a quota fail (400 "malformed
    # upload id"), and two uploads sending the same id shared one hold, which the first to end
    # gave back whole.
    ids = {gateway_quotas.one_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(metadata_quotas.validate_upload_id(i) == i for i in ids)


def test_a_manifest_pushed_again_lately_is_not_planned_for_deletion() -> None:
    # The real run deletes through the collector's script, which counts from the later of the
    # first arrival and the last push. Before: the plan counted from the first arrival only, so a
    # dry run listed a manifest pushed again lately that the real run then kept ("no longer
    # removable when its turn came").
    rule = Retention("ci/**", untagged_older_than=7 * 86400)
    again = Manifest("again", NOW - 10 * DAY_MS, "", (), 0, pushed_ms=NOW - DAY_MS)
    old = Manifest("old", NOW - 10 * DAY_MS, "", (), 0, pushed_ms=NOW - 8 * DAY_MS)
    gone = untagged_to_delete(rule, [again, old], collections.Counter(), NOW)
    assert [v.digest for v in gone] == ["old"]
    assert gone[0].at_ms == NOW - 8 * DAY_MS and "pushed again 8d ago" in gone[0].reason


def test_tag_globs_match_as_before_without_backtracking() -> None:
    # Before: a regular expression; a rule's glob such as "*1*1*1*1" took 0.16 s against one
    # 128-character tag that fails it, in the metadata service's event loop: a push of 28 such
    # tags (?tag=...) held every other request for 2 s.
    started = time.perf_counter()
    for _ in range(20):
        assert not governance.tag_matches("*1*1*1*1", "1" * 127 + "2")
    assert time.perf_counter() - started < 1.0
    rng = random.Random(7)
    for _ in range(20_000):
        glob = "".join(rng.choice("ab.-*?") for _ in range(rng.randint(1, 7)))
        tag = "".join(rng.choice("ab.-") for _ in range(rng.randint(1, 10)))
        expected = re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob), tag)
        assert governance.tag_matches(glob, tag) is (expected is not None), (glob, tag)
    assert governance.tag_matches("v*", "v1.2") and not governance.tag_matches("v*", "V1.2")
    assert governance.tag_matches("release-?", "release-1") and not governance.tag_matches("release-?", "release-")
