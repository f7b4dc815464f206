"""Event delivery service settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses

from services.common.settings import LOG_LEVELS, env


@dataclasses.dataclass(frozen=True)
class EventsSettings:
    listen: str = env("WHARF_EVENTS_LISTEN", "127.0.0.1:50056",
                      "gRPC address the delivery service binds (health checks only)")
    redis_url: str = env("WHARF_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL (the metadata service's)")
    public_url: str = env("WHARF_PUBLIC_URL", "", "the registry's external URL, for the events' target.url "
                          "(empty: built from the Host each request named)")
    lease_ttl: float = env("WHARF_EVENTS_LEASE", 10.0, "seconds a delivery replica owns an outbox shard without "
                           "renewing; a replica that died hands its shards over after this long",
                           minimum=1, maximum=300)
    internal_token_file: str = env("WHARF_INTERNAL_TOKEN_FILE", "",
                                   "file holding the secret every internal gRPC call carries (required; "
                                   "make run generates one)")
    metrics_addr: str = env("WHARF_EVENTS_METRICS_ADDR", "",
                            "host:port serving Prometheus metrics on /metrics (empty: off)", address=True)
    otlp_endpoint: str = env("WHARF_OTLP_ENDPOINT", "", "OTLP/HTTP collector base URL traces are exported to "
                             "(empty: tracing off)")
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level", choices=LOG_LEVELS)
