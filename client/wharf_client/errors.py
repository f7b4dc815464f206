"""Exceptions of the client library, one family so callers can catch ``WharfError`` and be done.

A registry answers failures with ``{"errors": [{"code", "message", "detail"}]}``;
:class:`RegistryError` keeps those entries, the HTTP status and the request that
failed, so a message can say *what* failed (method, URL) and *why* (the
registry's own code and message) instead of a bare status number.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wharf_client.untrusted import parse_json, printable


class WharfError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidReference(WharfError, ValueError):
    """An image reference, digest, tag or platform string that does not parse."""


class FormatError(WharfError):
    """Local content (OCI layout, docker tarball, manifest JSON) that is malformed or incomplete."""


class DigestMismatch(WharfError):
    """Bytes received do not hash to the digest they were requested by."""

    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class TransportError(WharfError):
    """The registry could not be reached, or the connection broke and retries ran out."""


class ProtocolError(WharfError):
    """The registry answered outside the protocol: a Location or Link on another host, a missing
    header, an upload offset that does not add up. Nothing more is sent to it for that operation."""


class PlatformNotFound(WharfError):
    """An index has no manifest for the requested platform."""


class ImageNotFound(WharfError):
    """A layout or a tarball has no image of the name asked for (exit 4, like a registry's 404)."""


class AmbiguousImage(WharfError):
    """A layout or a tarball holds several images and none was named (exit 2: say which)."""


class UnsupportedOperation(WharfError):
    """The source or target cannot do what was asked (referrers of an OCI layout, say)."""


@dataclasses.dataclass(frozen=True)
class ErrorEntry:
    """One entry of a registry's ``errors`` array."""

    code: str
    message: str
    detail: Any = None


class RegistryError(WharfError):
    """The registry answered with an error status."""

    def __init__(self, method: str, url: str, status: int, errors: list[ErrorEntry] | None = None,
                 body_text: str = "") -> None:
        self.method = method
        self.url = url
        self.status = status
        self.errors = list(errors or [])
        self.body_text = body_text
        super().__init__(self._describe())

    @property
    def codes(self) -> list[str]:
        return [entry.code for entry in self.errors]

    @property
    def code(self) -> str:
        """The first error code, or "" when the registry sent none (a proxy's HTML page, say)."""
        return self.errors[0].code if self.errors else ""

    def _describe(self) -> str:
        """One line; the registry's words are escaped, so they cannot drive the terminal they are shown on."""
        where = f"{self.method} {printable(self.url)}: HTTP {self.status}"
        if self.errors:
            reasons = "; ".join(f"{e.code}: {e.message}" if e.message else e.code for e in self.errors)
            return f"{where}: {printable(reasons)}"
        snippet = " ".join(self.body_text.split())[:200]
        return f"{where}" + (f": {printable(snippet)}" if snippet else "")


class AuthenticationError(RegistryError):
    """401/403: credentials missing, wrong, or not allowed to do this."""


class NotFoundError(RegistryError):
    """404: the repository, manifest, blob or upload is unknown."""


def parse_error_body(text: str) -> list[ErrorEntry]:
    """The ``errors`` array of a registry error body; [] for anything else (HTML, empty, garbage)."""
    try:
        payload = parse_json(text) if text else None
    except ValueError:
        return []
    entries = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        # Token servers answer OAuth2 style: {"error": "...", "error_description": "..."}.
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return [ErrorEntry(payload["error"].upper(), str(payload.get("error_description", "")))]
        return []
    found = []
    for entry in entries[:20]:
        if isinstance(entry, dict):
            found.append(ErrorEntry(str(entry.get("code", "UNKNOWN")), str(entry.get("message", "")),
                                    entry.get("detail")))
    return found


def registry_error(method: str, url: str, status: int, text: str) -> RegistryError:
    """The most specific :class:`RegistryError` subclass for a status and body."""
    entries = parse_error_body(text)
    cls: type[RegistryError] = RegistryError
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    return cls(method, url, status, entries, text if not entries else "")
