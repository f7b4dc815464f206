"""Who may do what: deny by default, then admin, own namespace, grants, public pulls, mirrors.

Pure functions over an account's facts, so the rules are testable without Redis. A name
that is not a canonical repository name (``b/../a/secret``, ``b/x;a/secret``, ``b/*``) is
granted nothing, whoever asks: the namespace rule is a prefix test, which is only sound on
canonical names, and the registry refuses such names anyway.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from services.common import patterns, scopes
from services.common.names import is_valid_name
from services.common.scopes import Scope

ALL_ACTIONS = frozenset(scopes.ACTIONS)


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller: an account, or anonymous (empty name)."""

    name: str = ""
    kind: str = "user"
    admin: bool = False
    grants: tuple[tuple[str, frozenset[str]], ...] = ()

    @property
    def anonymous(self) -> bool:
        return not self.name


ANONYMOUS = Principal()


def is_canonical(repository: str) -> bool:
    """A valid repository name. (names.NAME_RE ends in "$", which also matches before a final
    newline, so "b/x\n" would pass is_valid_name alone.)"""
    return is_valid_name(repository) and not repository.endswith("\n")


# Mirrored prefixes: (pattern, whether anonymous callers may pull too). Their repositories are
# pullable by any signed-in account, and by anonymous callers where the upstream entry says
# `anonymous: true` (anonymous pulls spend the upstream's rate limit and the disk).
MirrorPulls = tuple[tuple[str, bool], ...]


def mirror_pulls(prefixes: Iterable[tuple[str, bool]]) -> MirrorPulls:
    return tuple((f"{prefix}/**", anonymous) for prefix, anonymous in prefixes)


def repository_actions(principal: Principal, public_patterns: Iterable[str], repository: str,
                       mirrored: MirrorPulls = ()) -> frozenset[str]:
    if not is_canonical(repository):
        return frozenset()
    if principal.admin:
        return ALL_ACTIONS
    allowed: set[str] = set()
    # A user owns the namespace named after them; robots own nothing.
    if principal.kind == "user" and principal.name and repository.startswith(principal.name + "/"):
        allowed |= ALL_ACTIONS
    for pattern, actions in principal.grants:
        if patterns.matches(pattern, repository):
            allowed |= actions
    if patterns.matches_any(public_patterns, repository):
        allowed.add("pull")
    if any((anonymous or not principal.anonymous) and patterns.matches(pattern, repository)
           for pattern, anonymous in mirrored):
        allowed.add("pull")
    return frozenset(allowed)


def grant(principal: Principal, public_patterns: Iterable[str], requested: Iterable[Scope],
          mirrored: MirrorPulls = ()) -> list[Scope]:
    """The requested scopes reduced to what the principal may have (possibly no actions)."""
    public = list(public_patterns)
    granted: list[Scope] = []
    for scope in requested:
        if scope.type == scopes.REPOSITORY:
            allowed = repository_actions(principal, public, scope.name, mirrored)
            wanted = allowed if "*" in scope.actions else frozenset(scope.actions)
            actions = tuple(a for a in scopes.ACTIONS if a in wanted and a in allowed)
        elif scope.type == scopes.REGISTRY and scope.name == scopes.CATALOG:
            # Any signed-in account may list; the gateway filters the list by pull rights.
            actions = ("*",) if not principal.anonymous and "*" in scope.actions else ()
        elif scope.type == scopes.REGISTRY and scope.name == scopes.ADMIN:
            # Only an admin is one: the web UI shows the audit log to whoever holds this.
            actions = ("*",) if principal.admin and "*" in scope.actions else ()
        else:
            actions = ()
        granted.append(Scope(scope.type, scope.name, actions))
    return granted


def refused(requested: Iterable[Scope], granted: Iterable[Scope]) -> list[Scope]:
    """What was asked for and not given, so the gateway can answer 403 (asking again will not
    help) rather than 401 (this token was simply issued for something else)."""
    given = {(s.type, s.name): set(s.actions) for s in granted}
    out: list[Scope] = []
    for scope in requested:
        have = given.get((scope.type, scope.name), set())
        if scope.type == scopes.REPOSITORY:
            # Only actions there are (a name the client made up would only grow the token), and a
            # "*" stands for each of them: a DELETE after "*" got pull and push alone is refused
            # (403), as it is after asking for "delete" by name.
            asked = ALL_ACTIONS if "*" in scope.actions else set(scope.actions)
            missing = tuple(a for a in scopes.ACTIONS if a in asked and a not in have)
        else:
            # A registry scope's one action is "*": refused only when nothing was granted.
            missing = ("*",) if "*" in scope.actions and not have else ()
        if missing:
            out.append(Scope(scope.type, scope.name, missing))
    return out


def normalise_actions(actions: Iterable[str]) -> frozenset[str]:
    wanted = {a.strip() for a in actions if a.strip()}
    if "*" in wanted:
        return ALL_ACTIONS
    unknown = wanted - ALL_ACTIONS
    if unknown:
        raise ValueError(f"unknown actions {sorted(unknown)}; use pull, push, delete")
    return frozenset(wanted)
