"""Metadata service settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses

from services.common.settings import LOG_LEVELS, env


@dataclasses.dataclass(frozen=True)
class MetadataSettings:
    listen: str = env("WHARF_METADATA_LISTEN", "127.0.0.1:50052", "gRPC address to bind (host:port)")
    redis_url: str = env("WHARF_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL: redis://, rediss://, unix://, or redis+sentinel://host:port[,host:port]/<primary>[/db]")
    workers: int = env("WHARF_METADATA_WORKERS", 32, "Redis connections (plus 4) the asyncio server shares", minimum=1)
    cache_lease: float = env("WHARF_CACHE_LEASE", 2.0,
                             "seconds a gateway may serve cached manifests after its last answered ping; "
                             "also the longest a write waits for a gateway that stopped answering", minimum=0.1)
    cache_ack_timeout: float = env("WHARF_CACHE_ACK_TIMEOUT", 0.5,
                                   "seconds a write waits for a gateway to acknowledge an invalidation "
                                   "before it evicts that gateway's cache", minimum=0.01)
    internal_token_file: str = env("WHARF_INTERNAL_TOKEN_FILE", "",
                                   "file holding the secret every internal gRPC call carries (required; "
                                   "make run generates one)")
    metrics_addr: str = env("WHARF_METADATA_METRICS_ADDR", "",
                            "host:port serving Prometheus metrics on /metrics (empty: off)", address=True)
    otlp_endpoint: str = env("WHARF_OTLP_ENDPOINT", "", "OTLP/HTTP collector base URL traces are exported to "
                             "(e.g. http://127.0.0.1:4318; empty: tracing off)")
    events_outbox: str = env("WHARF_EVENTS_OUTBOX", "auto",
                             "record every change in the event outbox: auto (when the events section configures "
                             "an endpoint), on or off", choices=("auto", "on", "off"))
    audit_max_entries: int = env("WHARF_AUDIT_MAX_ENTRIES", 1_000_000,
                                 "the audit log keeps at most about this many records (the oldest go first)", minimum=1)
    audit_max_age: float = env("WHARF_AUDIT_MAX_AGE", 90 * 86400.0,
                               "seconds the audit log keeps a record (90 days)", minimum=1)
    retention_interval: float = env("WHARF_RETENTION_INTERVAL", 3600.0,
                                    "seconds between scheduled retention runs (one replica runs each; only "
                                    "when the policy has retention rules); 0: off", minimum=0)
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level", choices=LOG_LEVELS)
