"""Governance rules: immutable tags, quotas, retention and rate limits, in one checked shape.

One parser for every way a rule arrives: the policy file (``WHARF_POLICY_FILE``, or ``policy:``
in ``WHARF_CONFIG``, for GitOps), ``wharf-admin immutable|quota|retention|ratelimit`` and the
``Governance`` gRPC API (rules travel as JSON). The effective policy is the file's rules followed
by the stored ones (Redis, ``wharf:policy:<kind>``, changed by wharf-admin); a file rule cannot be
removed at run time, only by editing the file.

::

    immutable:                      # tags nobody can move or delete
      - repositories: "prod/**"     # repository pattern (services/common/patterns.py)
        tags: "v*"                  # tag glob: * any run of characters, ? one; default "*"
    quotas:                         # storage per namespace (a repository's first path component)
      - namespace: team
        size: 10MiB                 # 500MB (powers of 1000), 10GiB (1024), or bytes
    retention:
      - repositories: "ci/**"
        keep_last: 10               # keep the 10 most recently pushed tags
        keep_tags: ["latest", "release-*"]   # tags never removed by this rule
        older_than: 30d             # remove tags pushed longer ago (beyond keep_last)
        untagged_older_than: 7d     # remove untagged manifests that arrived longer ago
    ratelimits:                     # the first rule whose repositories match a request applies
      - repositories: "**"          # "**" alone also covers requests for no repository (/v2/, /token)
        requests_per_second: 20
        burst: 40
        push_bytes_per_second: 50MiB

Rule keys (what ``SetRule`` replaces and ``RemoveRule`` names): ``repositories`` and ``tags``
for immutable rules (``prod/**:v*``), ``namespace`` for quotas, ``repositories`` for retention
and rate limits.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from services.common import config_file, patterns
from services.common.yaml_section import parse_duration, parse_size

KINDS = ("immutable", "quota", "retention", "ratelimit")
# The policy file's sections, by kind.
SECTIONS = {"immutable": "immutable", "quotas": "quota", "retention": "retention", "ratelimits": "ratelimit"}
_TAG_GLOB_RE = re.compile(r"[A-Za-z0-9_.*?-]{1,128}")
_MAX_WILDCARDS = 4
_DIGITS_RE = re.compile(r"[0-9]+")
_NAMESPACE_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
MAX_RULES = 1000  # per kind: every write consults the immutable rules
# Sizes travel as int64 (gRPC answers carry a quota's limit), durations become milliseconds: larger
# values were accepted and then failed every upload to the namespace, or every retention run.
MAX_SIZE = 2**63 - 1
MAX_DURATION = 100 * 365 * 86400.0  # seconds: a century


class PolicyError(ValueError):
    """A rule is not valid; the message names the field and what it must be."""


def namespace_of(repository: str) -> str:
    """The namespace quotas count under: a repository's first path component."""
    return repository.split("/", 1)[0]


def tag_glob_problem(glob: str) -> str | None:
    if not _TAG_GLOB_RE.fullmatch(glob):
        return "a tag glob has 1 to 128 of letters, digits, '_', '.', '-', '*' and '?'"
    if glob.count("*") + glob.count("?") > _MAX_WILDCARDS:
        return f"a tag glob has at most {_MAX_WILDCARDS} wildcards"
    return None


def tag_matches(glob: str, tag: str) -> bool:
    """Whether ``tag`` matches ``glob`` (``*`` any run, ``?`` one character), in at most
    len(glob) * len(tag) steps: a regular expression backtracked, and a rule such as ``*1*1*1*1``
    against 28 tags of one push held the metadata service's event loop (every request) for 2 s.
    On a mismatch after a ``*``, only the last ``*`` takes one more character."""
    g = t = 0
    star, resume = -1, 0
    while t < len(tag):
        if g < len(glob) and glob[g] == "*":
            star, resume = g, t
            g += 1
        elif g < len(glob) and (glob[g] == "?" or glob[g] == tag[t]):
            g += 1
            t += 1
        elif star >= 0:
            resume += 1
            g, t = star + 1, resume
        else:
            return False
    return all(c == "*" for c in glob[g:])


@dataclasses.dataclass(frozen=True)
class Immutable:
    repositories: str
    tags: str = "*"

    @property
    def key(self) -> str:
        return f"{self.repositories}:{self.tags}"

    def covers(self, repository: str, tag: str) -> bool:
        return patterns.matches(self.repositories, repository) and tag_matches(self.tags, tag)


@dataclasses.dataclass(frozen=True)
class Quota:
    namespace: str
    size: int

    @property
    def key(self) -> str:
        return self.namespace


@dataclasses.dataclass(frozen=True)
class Retention:
    repositories: str
    keep_last: int | None = None
    keep_tags: tuple[str, ...] = ()
    older_than: float | None = None          # seconds
    untagged_older_than: float | None = None  # seconds

    @property
    def key(self) -> str:
        return self.repositories


@dataclasses.dataclass(frozen=True)
class RateLimit:
    repositories: str
    requests_per_second: float
    burst: int
    push_bytes_per_second: int | None = None

    @property
    def key(self) -> str:
        return self.repositories

    def covers(self, repository: str) -> bool:
        """Whether a request for ``repository`` ("" for none: /v2/, /token, the catalog) falls under it."""
        if not repository:
            return self.repositories == "**"
        return self.repositories == "**" or patterns.matches(self.repositories, repository)


Rule = Immutable | Quota | Retention | RateLimit


@dataclasses.dataclass(frozen=True)
class Policy:
    immutable: tuple[Immutable, ...] = ()
    quotas: tuple[Quota, ...] = ()
    retention: tuple[Retention, ...] = ()
    ratelimits: tuple[RateLimit, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.immutable or self.quotas or self.retention or self.ratelimits)

    def rules(self, kind: str) -> tuple[Rule, ...]:
        by_kind: dict[str, tuple[Rule, ...]] = {"immutable": self.immutable, "quota": self.quotas,
                                                "retention": self.retention, "ratelimit": self.ratelimits}
        return by_kind[kind]

    def then(self, other: Policy) -> Policy:
        """These rules followed by ``other``'s; a rule key in both (a quota's namespace, a retention
        rule's pattern...): the first wins. A stored rule later written into the policy file is
        thus shadowed by it, rather than making the effective policy one with a key twice, which
        no reader accepts (the gateways kept no rules at all: no rate limit, no quota hold)."""
        def after(mine: tuple[Any, ...], theirs: tuple[Any, ...]) -> tuple[Any, ...]:
            keys = {rule.key for rule in mine}
            return mine + tuple(rule for rule in theirs if rule.key not in keys)

        return Policy(after(self.immutable, other.immutable), after(self.quotas, other.quotas),
                      after(self.retention, other.retention), after(self.ratelimits, other.ratelimits))

    # -- what the rules say ------------------------------------------------------------------------

    def immutable_rule(self, repository: str, tag: str) -> Immutable | None:
        return next((rule for rule in self.immutable if rule.covers(repository, tag)), None)

    def immutable_repository(self, repository: str) -> Immutable | None:
        """A rule making some tags of ``repository`` immutable: its manifests' parts are held too."""
        return next((rule for rule in self.immutable if patterns.matches(rule.repositories, repository)), None)

    def quota(self, repository: str) -> Quota | None:
        namespace = namespace_of(repository)
        return next((rule for rule in self.quotas if rule.namespace == namespace), None)

    def ratelimit(self, repository: str) -> RateLimit | None:
        return next((rule for rule in self.ratelimits if rule.covers(repository)), None)

    def retention_rule(self, repository: str) -> Retention | None:
        return next((rule for rule in self.retention if patterns.matches(rule.repositories, repository)), None)

    # -- JSON ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({section: [rule_json(rule) for rule in self.rules(kind)]
                           for section, kind in SECTIONS.items()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """A policy as ``to_json`` wrote it: an effective one holds the file's rules and the stored
        ones, up to MAX_RULES of each per kind."""
        return parse_document(json.loads(text) if text else {}, "policy", max_rules=2 * MAX_RULES)


def rule_json(rule: Rule) -> dict[str, Any]:
    """A rule as its JSON object (durations in seconds, sizes in bytes, absent options left out)."""
    out = {k: v for k, v in dataclasses.asdict(rule).items() if v not in (None, ())}
    if isinstance(rule, Retention) and rule.keep_tags:
        out["keep_tags"] = list(rule.keep_tags)
    return out


def _fields(value: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected a mapping")
    missing = sorted(required - set(value))
    unknown = sorted(set(value) - required - optional)
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise PolicyError(f"{where}: {'; '.join(parts)} (fields: {', '.join(sorted(required | optional))})")
    return value


def _pattern(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: a repository pattern (text)")
    problem = patterns.pattern_problem(value)
    if problem:
        raise PolicyError(f"{where}: {problem}")
    return value


def _positive(value: Any, where: str, kind: type = int) -> Any:
    # Written so that NaN (JSON's NaN, YAML's .nan) fails it too.
    if type(value) not in ((int,) if kind is int else (int, float)) or not 0 < value <= 2**53:
        raise PolicyError(f"{where}: a number above 0, at most 2^53")
    return value


def _size(value: Any, where: str) -> int:
    size: int | float = 0
    if type(value) is int:
        size = value
    elif isinstance(value, str):
        try:
            # A plain number of bytes exactly (parse_size goes through a float, which rounds).
            size = int(value) if _DIGITS_RE.fullmatch(value.strip()) else parse_size(value)
        except (ValueError, OverflowError):  # OverflowError: more digits than a float holds
            size = 0
    if not 0 < size <= MAX_SIZE:
        raise PolicyError(f"{where}: a size like 500MB, 10GiB or a number of bytes, above 0 and below 8 EiB")
    return int(size)


def _duration(value: Any, where: str) -> float:
    seconds: float = 0.0
    try:
        if type(value) in (int, float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
    except (ValueError, OverflowError):  # OverflowError: an int or a text too large for a float
        seconds = 0.0
    if not 0 < seconds <= MAX_DURATION:  # NaN and infinity fail it too
        raise PolicyError(f"{where}: a duration like 12h or 7d, above 0 and at most 100 years")
    return seconds


def parse_rule(kind: str, value: Any, where: str = "") -> Rule:
    """One rule of ``kind`` from its mapping; PolicyError naming the field."""
    where = where or kind
    if kind == "immutable":
        fields = _fields(value, where, {"repositories"}, {"tags"})
        tags = fields.get("tags", "*")
        problem = tag_glob_problem(tags) if isinstance(tags, str) else "a tag glob (text)"
        if problem:
            raise PolicyError(f"{where}.tags: {problem}")
        return Immutable(_pattern(fields["repositories"], f"{where}.repositories"), tags)
    if kind == "quota":
        fields = _fields(value, where, {"namespace", "size"}, set())
        namespace = fields["namespace"]
        if not isinstance(namespace, str) or len(namespace) > 255 or not _NAMESPACE_RE.fullmatch(namespace):
            raise PolicyError(f"{where}.namespace: a repository name's first component (e.g. team)")
        return Quota(namespace, _size(fields["size"], f"{where}.size"))
    if kind == "retention":
        fields = _fields(value, where, {"repositories"},
                         {"keep_last", "keep_tags", "older_than", "untagged_older_than"})
        keep_tags = fields.get("keep_tags", [])
        if isinstance(keep_tags, str):
            keep_tags = [keep_tags]
        if not isinstance(keep_tags, list) or not all(isinstance(t, str) for t in keep_tags):
            raise PolicyError(f"{where}.keep_tags: a list of tag globs")
        for glob in keep_tags:
            problem = tag_glob_problem(glob)
            if problem:
                raise PolicyError(f"{where}.keep_tags: {glob!r}: {problem}")
        keep_last = fields.get("keep_last")
        if keep_last is not None and (type(keep_last) is not int or not 0 <= keep_last <= 1_000_000):
            raise PolicyError(f"{where}.keep_last: a whole number from 0")
        older = fields.get("older_than")
        untagged = fields.get("untagged_older_than")
        rule = Retention(_pattern(fields["repositories"], f"{where}.repositories"), keep_last, tuple(keep_tags),
                         _duration(older, f"{where}.older_than") if older is not None else None,
                         _duration(untagged, f"{where}.untagged_older_than") if untagged is not None else None)
        if rule.keep_last is None and rule.older_than is None and rule.untagged_older_than is None:
            raise PolicyError(f"{where}: say what goes: keep_last, older_than or untagged_older_than")
        return rule
    if kind == "ratelimit":
        fields = _fields(value, where, {"repositories", "requests_per_second"}, {"burst", "push_bytes_per_second"})
        repositories = fields["repositories"]
        if repositories != "**":
            repositories = _pattern(repositories, f"{where}.repositories")
        rate = float(_positive(fields["requests_per_second"], f"{where}.requests_per_second", float))
        burst = fields.get("burst", max(1, int(rate)))
        if type(burst) is not int or not 1 <= burst <= 1_000_000:
            raise PolicyError(f"{where}.burst: a whole number from 1")
        push = fields.get("push_bytes_per_second")
        return RateLimit(repositories, rate, burst,
                         _size(push, f"{where}.push_bytes_per_second") if push is not None else None)
    raise PolicyError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")


def parse_document(document: Any, where: str = "policy", max_rules: int = MAX_RULES) -> Policy:
    """A whole policy (the file's section, or stored JSON); PolicyError naming the place."""
    if document is None:
        return Policy()
    if not isinstance(document, dict):
        raise PolicyError(f"{where}: expected a mapping of {', '.join(SECTIONS)}")
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise PolicyError(f"{where}: unknown sections {', '.join(map(str, unknown))} (known: {', '.join(SECTIONS)})")
    found: dict[str, list[Rule]] = {kind: [] for kind in KINDS}
    for section, kind in SECTIONS.items():
        entries = document.get(section) or []
        if not isinstance(entries, list):
            raise PolicyError(f"{where}.{section}: expected a list")
        if len(entries) > max_rules:
            raise PolicyError(f"{where}.{section}: at most {max_rules} rules")
        keys = set()
        for index, entry in enumerate(entries):
            rule = parse_rule(kind, entry, f"{where}.{section}[{index}]")
            if rule.key in keys:
                raise PolicyError(f"{where}.{section}[{index}]: a second rule for {rule.key}")
            keys.add(rule.key)
            found[kind].append(rule)
    return Policy(tuple(found["immutable"]), tuple(found["quota"]), tuple(found["retention"]),  # type: ignore[arg-type]
                  tuple(found["ratelimit"]))  # type: ignore[arg-type]


def load_file(environ: Mapping[str, str]) -> Policy:
    """The policy file's rules (none without one); PolicyError or ConfigFileError naming the problem."""
    return parse_document(config_file.section(environ, "policy"), "policy")


def problems(environ: Mapping[str, str]) -> list[str]:
    """For ``wharf-stack --check``: what is wrong with the policy file, one line."""
    try:
        load_file(environ)
    except (PolicyError, config_file.ConfigFileError) as exc:
        return [f"policy: {exc}"]
    return []
