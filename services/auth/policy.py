"""Who may do what: deny by default, then admin, own namespace, grants, public pulls.

Pure functions over an account's facts, so the rules are testable without Redis.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

from services.common import scopes
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


def repository_actions(principal: Principal, public_patterns: Iterable[str], repository: str) -> frozenset[str]:
    if principal.admin:
        return ALL_ACTIONS
    allowed: set[str] = set()
    # A user owns the namespace named after them; robots own nothing.
    if principal.kind == "user" and principal.name and repository.startswith(principal.name + "/"):
        allowed |= ALL_ACTIONS
    for pattern, actions in principal.grants:
        if fnmatch.fnmatchcase(repository, pattern):
            allowed |= actions
    if any(fnmatch.fnmatchcase(repository, pattern) for pattern in public_patterns):
        allowed.add("pull")
    return frozenset(allowed)


def grant(principal: Principal, public_patterns: Iterable[str], requested: Iterable[Scope]) -> list[Scope]:
    """The requested scopes reduced to what the principal may have.

    Every requested resource stays in the answer, possibly with no actions, so the
    gateway can tell "this token was refused that" (403) from "this token is for
    something else" (401, go get another).
    """
    public = list(public_patterns)
    granted: list[Scope] = []
    for scope in requested:
        if scope.type == scopes.REPOSITORY:
            allowed = repository_actions(principal, public, scope.name)
            wanted = allowed if "*" in scope.actions else frozenset(scope.actions)
            actions = tuple(a for a in scopes.ACTIONS if a in wanted and a in allowed)
        elif scope.type == scopes.REGISTRY and scope.name == scopes.CATALOG:
            # Any signed-in account may list; the gateway filters the list by pull rights.
            actions = ("*",) if not principal.anonymous and "*" in scope.actions else ()
        else:
            actions = ()
        granted.append(Scope(scope.type, scope.name, actions))
    return granted


def normalise_actions(actions: Iterable[str]) -> frozenset[str]:
    wanted = {a.strip() for a in actions if a.strip()}
    if "*" in wanted:
        return ALL_ACTIONS
    unknown = wanted - ALL_ACTIONS
    if unknown:
        raise ValueError(f"unknown actions {sorted(unknown)}; use pull, push, delete")
    return frozenset(wanted)
