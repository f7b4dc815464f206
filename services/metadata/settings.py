"""Metadata service settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses

from services.common.settings import env


@dataclasses.dataclass(frozen=True)
class MetadataSettings:
    listen: str = env("WHARF_METADATA_LISTEN", "127.0.0.1:50052", "gRPC address to bind (host:port)")
    redis_url: str = env("WHARF_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL (redis:// or unix://)")
    workers: int = env("WHARF_METADATA_WORKERS", 32, "Redis connections (plus 4) the asyncio server shares")
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level")
