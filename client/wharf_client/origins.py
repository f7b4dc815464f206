"""The origin (scheme, host, port) of a URL: credentials go only where it matches the place they belong to."""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port filled in; what decides whether credentials may go there."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, an unclosed "[": matches nothing
        return ("", "", None)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def same_or_upgraded(source: str, target: str) -> bool:
    """Whether ``target`` is on the origin of ``source``, or is its host over HTTPS (an http to https upgrade)."""
    was, now = origin(source), origin(target)
    if not was[1]:
        return False
    return now == was or (was[0] == "http" and now[0] == "https" and now[1] == was[1])
