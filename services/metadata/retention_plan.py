"""What one retention rule removes from one repository: pure decisions over what was read.

No Redis here, so the rules' exact meaning is tested without a server (tests/unit/test_retention_plan.py);
services/metadata/retention.py reads the repository, asks these functions, and deletes.

Tags (``keep_last``, ``keep_tags``, ``older_than``; immutable rules of the same policy):

- The repository's tags are ordered by push time, newest first (a tag's time is its last push,
  so a tag pushed again counts as new; ties broken by name).
- A tag is a *candidate* when, with ``older_than`` set, it was pushed longer ago than that; with
  only ``keep_last`` set, when it is not among the ``keep_last`` newest. A rule with neither
  (only ``untagged_older_than``) removes no tag.
- A candidate is *protected*, and reported as kept with the reason, when it is immutable (an
  immutable rule of the policy covers it: retention never deletes those), matches one of
  ``keep_tags``, or (with ``older_than``) is among the ``keep_last`` newest. Every other
  candidate is deleted.
- ``keep_last`` counts every tag of the repository, protected or not: ``keep_last: 3`` keeps
  the three newest tags, even when one of them is ``latest`` and also matches ``keep_tags``.
- A tag whose push time is unknown (0: never the case once the data model is migrated) sorts
  as the oldest, and is never a candidate by age: its age cannot be shown.

Untagged manifests (``untagged_older_than``): the garbage collector's rule
(redis_keys.GC_DELETE_MANIFEST, which the real run executes and which re-checks each one
atomically): a manifest goes when no tag points at it, no index of the repository names it,
it arrived (first push, or its last push again) longer ago than the duration, and it is not a referrer (a signature,
an SBOM) of a manifest still stored; a referrer whose subject is gone goes too. The tags this
run deletes count as gone, so the manifest of a deleted tag goes in the same run when it
arrived long enough ago, and so do the children of an index that goes (computed to a fixed
point here, so a dry run lists exactly what the real run removes).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

from services.common.governance import Policy, Retention, tag_matches


@dataclasses.dataclass(frozen=True)
class Tag:
    name: str
    digest: str
    pushed_ms: int  # 0: unknown


@dataclasses.dataclass(frozen=True)
class Manifest:
    digest: str
    created_ms: int                # first arrival
    subject: str                   # "" unless it is a referrer
    children: tuple[str, ...]      # the manifests it names (an index's)
    tags: int                      # how many tags point at it now
    pushed_ms: int = 0             # its last push again, when it was pushed again (0: never)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A tag (``tag`` set) or an untagged manifest, and why it goes or stays."""

    digest: str
    tag: str
    at_ms: int
    reason: str


def human(seconds: float) -> str:
    """A duration as people write it in the policy: 90s, 15m, 36h, 7d (the largest unit that fits)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (seconds >= size and seconds % size == 0):
            value = seconds / size
            return f"{value:.0f}{unit}" if value >= 10 or value == int(value) else f"{value:.1f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 or seconds == int(seconds) else f"{seconds:.1f}s"


def tags_to_delete(rule: Retention, repository: str, tags: Iterable[Tag], now_ms: int,
                   policy: Policy) -> tuple[list[Verdict], list[Verdict]]:
    """(tags that go, candidates kept by a protection), each with its reason, newest first."""
    if rule.keep_last is None and rule.older_than is None:
        return [], []
    cutoff = now_ms - int(rule.older_than * 1000) if rule.older_than is not None else None
    deleted: list[Verdict] = []
    kept: list[Verdict] = []
    for rank, tag in enumerate(sorted(tags, key=lambda t: (-t.pushed_ms, t.name))):
        if cutoff is not None:
            if tag.pushed_ms <= 0 or tag.pushed_ms >= cutoff:
                continue
            why = f"pushed {human((now_ms - tag.pushed_ms) / 1000)} ago (older_than {human(rule.older_than or 0)})"
            protection = _protection(rule, repository, tag.name, policy, among_newest=rule.keep_last is not None
                                     and rank < rule.keep_last)
        else:
            assert rule.keep_last is not None
            if rank < rule.keep_last:
                continue
            why = f"not among the {rule.keep_last} most recently pushed tags (keep_last)"
            protection = _protection(rule, repository, tag.name, policy, among_newest=False)
        verdict = Verdict(tag.digest, tag.name, tag.pushed_ms, why)
        if protection:
            kept.append(dataclasses.replace(verdict, reason=f"{protection}; would go: {why}"))
        else:
            deleted.append(verdict)
    return deleted, kept


def _protection(rule: Retention, repository: str, tag: str, policy: Policy, among_newest: bool) -> str:
    immutable = policy.immutable_rule(repository, tag)
    if immutable is not None:
        return f"immutable (rule {immutable.key})"
    glob = next((g for g in rule.keep_tags if tag_matches(g, tag)), None)
    if glob is not None:
        return f"matches keep_tags {glob!r}"
    if among_newest:
        return f"among the {rule.keep_last} most recently pushed tags (keep_last)"
    return ""


def untagged_to_delete(rule: Retention, manifests: Iterable[Manifest], untagging: collections.Counter[str],
                       now_ms: int) -> list[Verdict]:
    """The untagged manifests that go, in an order the collector's script accepts one by one
    (an index before its children, a subject before its referrers). ``untagging``: how many of
    each manifest's tags this run deletes (a dry run's, which are still stored)."""
    if rule.untagged_older_than is None:
        return []
    grace_ms = int(rule.untagged_older_than * 1000)
    stored = {m.digest: m for m in manifests}
    named = collections.Counter(child for m in stored.values() for child in set(m.children))
    remaining = set(stored)
    out: list[Verdict] = []
    progress = True
    while progress:  # each pass removes at least one manifest, or stops
        progress = False
        for digest in sorted(remaining):
            m = stored[digest]
            if m.tags - untagging[digest] > 0 or named[digest] > 0:
                continue
            if m.subject and m.subject in remaining:
                continue  # a signature or SBOM of a manifest that stays
            # The collector's script (which the real run executes) counts from the later of the
            # first arrival and the last push: so does the plan, or a dry run listed a manifest
            # pushed again lately that the real run then kept.
            last_ms = max(m.created_ms, m.pushed_ms)
            age_ms = now_ms - last_ms
            if m.created_ms <= 0 or age_ms < grace_ms:
                continue
            remaining.discard(digest)
            for child in set(m.children):
                named[child] -= 1
            how = "pushed again" if m.pushed_ms > m.created_ms else "arrived"
            why = (f"untagged, {how} {human(age_ms / 1000)} ago "
                   f"(untagged_older_than {human(rule.untagged_older_than)})")
            if m.subject:
                why += "; a referrer whose subject is gone"
            out.append(Verdict(digest, "", last_ms, why))
            progress = True
    return out
