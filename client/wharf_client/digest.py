"""Content digests: validation, hashing, and a reader that checks what it streams.

Everything a registry serves by digest is checked by the client before it is
trusted or written where a later step would treat it as verified.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from wharf_client.errors import DigestMismatch, InvalidReference

# Registered algorithms and the exact length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HEX_RE = re.compile(r"^[a-f0-9]+$")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def validate(value: str) -> str:
    """``value`` when it is a digest of a registered algorithm with the right length; raises otherwise."""
    found = _DIGEST_RE.match(value or "")
    if not found:
        raise InvalidReference(f"invalid digest {value[:150]!r}")
    algorithm, encoded = found.groups()
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise InvalidReference(f"unsupported digest algorithm {algorithm!r} in {value[:150]!r}")
    if len(encoded) != length or not _HEX_RE.match(encoded):
        raise InvalidReference(f"invalid {algorithm} digest {value[:150]!r}")
    return value


def is_digest(value: str) -> bool:
    try:
        validate(value)
    except InvalidReference:
        return False
    return True


def algorithm_of(value: str) -> str:
    return validate(value).split(":", 1)[0]


def encoded(value: str) -> str:
    """The hex part of a digest (what OCI layouts use as a file name)."""
    return validate(value).split(":", 1)[1]


def hasher(algorithm: str = "sha256") -> Hasher:
    if algorithm not in ALGORITHMS:
        raise InvalidReference(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class Verifier:
    """Hashes bytes as they pass and checks the total against an expected digest and size."""

    def __init__(self, expected: str, size: int | None = None, what: str = "") -> None:
        self.expected = validate(expected)
        self.size = size
        self.what = what or expected
        self.received = 0
        self._hash = hasher(algorithm_of(expected))

    def update(self, data: bytes) -> None:
        self.received += len(data)
        self._hash.update(data)

    @property
    def actual(self) -> str:
        return f"{algorithm_of(self.expected)}:{self._hash.hexdigest()}"

    def check(self) -> None:
        if self.size is not None and self.received != self.size:
            raise DigestMismatch(f"{self.size} bytes", f"{self.received} bytes", self.what)
        actual = self.actual
        if actual != self.expected:
            raise DigestMismatch(self.expected, actual, self.what)
