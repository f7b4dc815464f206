"""Token scopes as the Docker registry token specification writes them.

``repository:samalba/my-app:pull,push`` is a resource type, a name (which may
itself contain ":" for a host:port prefix, so the name is everything between
the first and the last colon) and a comma-separated action list.
"""

from __future__ import annotations

import dataclasses

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"
ACTIONS = ("pull", "push", "delete")


@dataclasses.dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def claim(self) -> dict[str, object]:
        """The token's ``access`` entry for this scope."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse(value: str) -> Scope | None:
    """One scope, or None when it is malformed (malformed scopes are dropped, not fatal)."""
    first, last = value.find(":"), value.rfind(":")
    if first <= 0 or last == first:
        return None
    kind, name, actions = value[:first], value[first + 1:last], value[last + 1:]
    if not name or len(value) > 1024:
        return None
    wanted = tuple(dict.fromkeys(a.strip() for a in actions.split(",") if a.strip()))
    return Scope(kind, name, wanted)


def parse_many(values: list[str]) -> list[Scope]:
    """Scopes from repeated ``scope`` parameters, each possibly space-separated."""
    found: list[Scope] = []
    for value in values:
        for part in value.split():
            scope = parse(part)
            if scope is not None:
                found.append(scope)
    return found
