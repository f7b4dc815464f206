"""Client settings: one object, passed in, never read from globals or the environment at import."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from collections.abc import Mapping

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# Binary for K/M/G, Ki/Mi/Gi and KiB/MiB/GiB (as docker's --memory reads them), decimal for KB/MB/GB.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([kmgt])(ib|i|b)?|(b))?\s*$", re.IGNORECASE)
_BINARY = {"k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}

try:
    _VERSION = importlib.metadata.version("wharf")
except importlib.metadata.PackageNotFoundError:  # vendored without its metadata: the version is cosmetic
    _VERSION = "0"


@dataclasses.dataclass(frozen=True)
class RegistryOptions:
    """How to reach one registry: ``plain_http`` speaks HTTP, ``insecure`` skips TLS verification."""

    plain_http: bool = False
    insecure: bool = False


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """Tuning and per-registry transport settings of a :class:`wharf_client.Client`."""

    registries: Mapping[str, RegistryOptions] = dataclasses.field(default_factory=dict)
    default_registry_options: RegistryOptions = RegistryOptions()
    retries: int = 5
    backoff: float = 0.5            # seconds before the first retry, doubled each time
    max_backoff: float = 20.0
    max_retry_after: float = 120.0  # a Retry-After longer than this is cut to it
    timeout: tuple[float, float] = (15.0, 300.0)  # connect, read
    concurrency: int = 4            # blobs transferred at once
    monolithic_limit: int = 16 * MIB  # blobs up to this size go in one request
    chunk_size: int = 64 * MIB      # PATCH size of a chunked upload: the most a resumed upload resends
    # A blob download slower than min_speed bytes/s, over min_speed_window seconds of waiting for
    # bytes, is dropped and resumed with Range (a stuck mirror or CDN node, a registry dripping
    # bytes just within the read timeout); 0 turns the floor off.
    min_speed: int = 1024
    min_speed_window: float = 60.0
    user_agent: str = f"wharf/{_VERSION}"

    def for_registry(self, registry: str) -> RegistryOptions:
        return self.registries.get(registry, self.default_registry_options)


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``512K``, ``16MiB``, ``5M`` (binary) or ``5MB`` (decimal); ValueError otherwise."""
    found = _SIZE_RE.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a size (examples: 1048576, 512KiB, 16MiB, 5M, 1G)")
    number, unit, suffix = int(found.group(1)), (found.group(2) or "").lower(), (found.group(3) or "").lower()
    if not unit:
        return number
    return number * (_DECIMAL[unit] if suffix == "b" else _BINARY[unit])
