"""Content digests (``algorithm:hex``) as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from services.common.errors import DIGEST_INVALID, RegistryError

# Registered algorithms and the exact length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)\Z")
_HEX_RE = re.compile(r"^[a-f0-9]+\Z")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def looks_like_digest(value: str) -> bool:
    """True for anything of the digest grammar, registered algorithm or not."""
    return bool(_DIGEST_RE.fullmatch(value))


def parse(value: str) -> tuple[str, str]:
    """Splits and validates a digest; raises DIGEST_INVALID for anything Wharf cannot verify."""
    match = _DIGEST_RE.fullmatch(value or "")
    if not match:
        raise RegistryError(DIGEST_INVALID, f"invalid digest {value[:150]!r}")
    algorithm, encoded = match.groups()
    expected_len = ALGORITHMS.get(algorithm)
    if expected_len is None:
        raise RegistryError(DIGEST_INVALID, f"unsupported digest algorithm {algorithm!r}")
    if len(encoded) != expected_len or not _HEX_RE.fullmatch(encoded):
        raise RegistryError(DIGEST_INVALID, f"invalid {algorithm} digest {value[:150]!r}")
    return algorithm, encoded


def validate(value: str) -> str:
    parse(value)
    return value


def hasher(algorithm: str) -> Hasher:
    if algorithm not in ALGORITHMS:
        raise RegistryError(DIGEST_INVALID, f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
