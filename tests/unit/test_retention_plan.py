"""What a retention rule selects (services/metadata/retention_plan.py): every combination, no sockets."""

from __future__ import annotations

import collections

from services.common.governance import Immutable, Policy, Retention
from services.metadata.retention_plan import Manifest, Tag, human, tags_to_delete, untagged_to_delete

NOW = 1_000_000_000_000
DAY_MS = 86_400_000


def tags(*ages_days: tuple[str, float]) -> list[Tag]:
    return [Tag(name, f"sha256:{name}", NOW - int(age * DAY_MS)) for name, age in ages_days]


def names(verdicts: list) -> list[str]:  # type: ignore[type-arg]
    return [v.tag or v.digest for v in verdicts]


REPO = tags(("a", 1), ("b", 2), ("latest", 3), ("v1.0", 40), ("c", 50), ("d", 60))


def test_keep_last_alone_deletes_every_tag_beyond_the_newest() -> None:
    rule = Retention("ci/**", keep_last=2)
    deleted, kept = tags_to_delete(rule, "ci/app", REPO, NOW, Policy())
    assert names(deleted) == ["latest", "v1.0", "c", "d"] and kept == []


def test_keep_tags_and_immutable_tags_are_kept_with_their_reason() -> None:
    rule = Retention("ci/**", keep_last=2, keep_tags=("lat*",))
    policy = Policy(immutable=(Immutable("ci/**", "v*"),), retention=(rule,))
    deleted, kept = tags_to_delete(rule, "ci/app", REPO, NOW, policy)
    assert names(deleted) == ["c", "d"]
    assert names(kept) == ["latest", "v1.0"]
    assert "keep_tags 'lat*'" in kept[0].reason and "immutable (rule ci/**:v*)" in kept[1].reason


def test_older_than_alone_deletes_only_old_tags() -> None:
    rule = Retention("ci/**", older_than=30 * 86400)
    deleted, kept = tags_to_delete(rule, "ci/app", REPO, NOW, Policy())
    assert names(deleted) == ["v1.0", "c", "d"] and kept == []
    assert "older_than 30d" in deleted[0].reason


def test_older_than_with_keep_last_keeps_the_newest_even_when_old() -> None:
    old = tags(("x", 40), ("y", 50), ("z", 60))
    rule = Retention("ci/**", keep_last=2, older_than=30 * 86400)
    deleted, kept = tags_to_delete(rule, "ci/app", old, NOW, Policy())
    assert names(deleted) == ["z"]
    assert names(kept) == ["x", "y"] and "keep_last" in kept[0].reason


def test_keep_last_counts_protected_tags_too() -> None:
    rule = Retention("ci/**", keep_last=1, keep_tags=("a",))
    deleted, kept = tags_to_delete(rule, "ci/app", tags(("a", 1), ("b", 2), ("c", 3)), NOW, Policy())
    assert names(deleted) == ["b", "c"] and kept == []


def test_untagged_only_rule_deletes_no_tag_and_unknown_push_times_are_not_old() -> None:
    assert tags_to_delete(Retention("ci/**", untagged_older_than=60), "ci/app", REPO, NOW, Policy()) == ([], [])
    unknown = [Tag("u", "sha256:u", 0), *tags(("n", 1))]
    deleted, _ = tags_to_delete(Retention("ci/**", older_than=1), "ci/app", unknown, NOW, Policy())
    assert names(deleted) == ["n"]
    deleted, _ = tags_to_delete(Retention("ci/**", keep_last=1), "ci/app", unknown, NOW, Policy())
    assert names(deleted) == ["u"]  # unknown sorts oldest


def manifest(digest: str, age_days: float, tags: int = 0, subject: str = "", children: tuple[str, ...] = ()
             ) -> Manifest:
    return Manifest(digest, NOW - int(age_days * DAY_MS), subject, children, tags)


def test_untagged_manifests_follow_the_collectors_rule() -> None:
    rule = Retention("ci/**", untagged_older_than=7 * 86400)
    stored = [
        manifest("old", 10),                                  # untagged, old: goes
        manifest("young", 1),                                 # untagged, young: stays
        manifest("tagged", 10, tags=1),                       # tagged: stays
        manifest("sig", 10, subject="tagged"),                # a referrer of a stored image: stays
        manifest("orphan-sig", 10, subject="sha256:gone"),    # a referrer of nothing stored: goes
        manifest("index", 10, children=("child",)),           # an untagged index: goes, then its child
        manifest("child", 10),
        manifest("kept-child", 10),
        manifest("tagged-index", 1, tags=1, children=("kept-child",)),
    ]
    gone = untagged_to_delete(rule, stored, collections.Counter(), NOW)
    assert names(gone) == ["index", "old", "orphan-sig", "child"]
    assert "a referrer whose subject is gone" in gone[2].reason


def test_tags_this_run_deletes_count_as_gone_in_a_dry_run() -> None:
    rule = Retention("ci/**", untagged_older_than=7 * 86400)
    stored = [manifest("img", 10, tags=2), manifest("sig", 10, subject="img"), manifest("fresh", 1, tags=1)]
    assert names(untagged_to_delete(rule, stored, collections.Counter({"img": 1}), NOW)) == []
    assert names(untagged_to_delete(rule, stored, collections.Counter({"img": 2, "fresh": 1}), NOW)) == ["img", "sig"]
    assert untagged_to_delete(Retention("ci/**", keep_last=1), stored, collections.Counter({"img": 2}), NOW) == []


def test_durations_read_as_written() -> None:
    assert [human(s) for s in (2, 1.5, 90, 120, 3600, 36 * 3600, 7 * 86400, 30 * 86400)] == \
        ["2s", "1.5s", "90s", "2m", "1h", "36h", "7d", "30d"]


def test_a_report_lists_a_bounded_number_of_items_and_counts_the_rest() -> None:
    from services.metadata.retention import _Report
    from services.metadata.retention_plan import Verdict

    report = _Report(limit=2)
    report.deleted("ci/app", [Verdict(f"sha256:{i}", f"t{i}", NOW, "old") for i in range(5)])
    report.deleted("ci/app", [Verdict("sha256:m", "", NOW, "untagged")])
    report.kept("ci/app", [Verdict("sha256:k", "keep", NOW, "immutable")])
    assert [i.tag for i in report.pb.deleted] == ["t0", "t1"] and report.pb.deleted_more == 4
    assert len(report.pb.kept) == 1 and report.pb.kept_more == 0
    assert (report.tags, report.manifests) == (5, 1)
