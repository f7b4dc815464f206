"""``WWW-Authenticate`` challenges (RFC 7235), as registries send them.

A header may carry several challenges (``Basic realm="x", Bearer realm="y",...``)
and quoted values may contain commas, so a split on "," is not enough.
"""

from __future__ import annotations

import dataclasses
import re

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(?:,|$)')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclasses.dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()

    @property
    def error(self) -> str:
        return self.params.get("error", "")


def parse(header: str) -> list[Challenge]:
    """Every challenge in the header, in order; unknown syntax ends the parse rather than raising."""
    found: list[Challenge] = []
    rest = header or ""
    while rest.strip():
        scheme_match = _SCHEME_RE.match(rest)
        if not scheme_match:
            break
        scheme, rest = scheme_match.group(1).lower(), rest[scheme_match.end():]
        params: dict[str, str] = {}
        while True:
            param = _PARAM_RE.match(rest)
            if not param:
                break
            key, quoted, bare = param.groups()
            params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            rest = rest[param.end():]
        found.append(Challenge(scheme, params))
        rest = rest.lstrip(" ,")
    return found


def preferred(header: str) -> Challenge | None:
    """Bearer when offered (it carries scopes), else Basic, else None."""
    challenges = parse(header)
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None
