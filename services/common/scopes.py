"""Token scopes as the Docker registry token specification writes them.

``repository:samalba/my-app:pull,push`` is a resource type, a name (which may
itself contain ":" for a host:port prefix, so the name is everything between
the first and the last colon) and a comma-separated action list.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from services.common.errors import REQUEST_INVALID, RegistryError

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"
# ``registry:admin:*``: granted to admin accounts only, and to nothing else; no API route needs it.
# The web UI asks for it to learn, from a token the auth service signed, whether the signed-in
# account is an admin (services/ui/README.md).
ADMIN = "admin"
ACTIONS = ("pull", "push", "delete")
_PART_RE = re.compile(r"\S+")


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


def parse_many(values: Iterable[str], limit: int | None = None) -> list[Scope]:
    """Scopes from repeated ``scope`` parameters, each possibly space-separated.

    ``limit`` caps the scopes *after* splitting: a cap on parameters alone let one
    parameter carry a hundred scopes into a 14 KB token. Past the limit the request is
    refused (REQUEST_INVALID) rather than cut, so a client never receives a token silently
    missing what it asked for. Repeats count once; malformed scopes count too (and are then
    dropped), so the work done is bounded by the limit either way.
    """
    seen: set[str] = set()
    found: list[Scope] = []
    for value in values:
        for match in _PART_RE.finditer(value):
            part = match.group()
            if part in seen:
                continue
            seen.add(part)
            if limit is not None and len(seen) > limit:
                raise RegistryError(REQUEST_INVALID, f"at most {limit} scopes can be asked for at once")
            scope = parse(part)
            if scope is not None:
                found.append(scope)
    return found
