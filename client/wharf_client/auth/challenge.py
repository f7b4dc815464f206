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
_SEPARATORS_RE = re.compile(r"[ ,]*")
MAX_CHALLENGES = 16
MAX_PARAMS = 32


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
    """Every challenge in the header, in order; unknown syntax ends the parse rather than raising.

    One pass over the header (matches at a position, never on a copy of the rest), so a registry
    sending megabytes of parameters (100 header lines of 64 KiB, joined) costs linear time, not
    minutes of CPU; past :data:`MAX_CHALLENGES` challenges or :data:`MAX_PARAMS` parameters in
    one, the rest is ignored.
    """
    found: list[Challenge] = []
    text = header or ""
    position = 0
    while position < len(text) and len(found) < MAX_CHALLENGES:
        scheme_match = _SCHEME_RE.match(text, position)
        if not scheme_match:
            break
        scheme, position = scheme_match.group(1).lower(), scheme_match.end()
        params: dict[str, str] = {}
        for _ in range(MAX_PARAMS):
            param = _PARAM_RE.match(text, position)
            if not param:
                break
            key, quoted, bare = param.groups()
            params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            position = param.end()
        found.append(Challenge(scheme, params))
        separators = _SEPARATORS_RE.match(text, position)
        position = separators.end() if separators else position
    return found


def preferred(header: str) -> Challenge | None:
    """Bearer when offered (it carries scopes), else Basic, else None."""
    challenges = parse(header)
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None
