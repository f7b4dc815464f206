"""Gateway settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses

from services.common.rpc import MAX_MANIFEST_BYTES
from services.common.settings import LOG_LEVELS, SettingsError, env


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    host: str = env("WHARF_HOST", "127.0.0.1", "address the registry listens on")
    port: int = env("WHARF_PORT", 5000, "port the registry listens on", minimum=1, maximum=65535)
    blobstore_addr: str = env("WHARF_BLOBSTORE_ADDR", "127.0.0.1:50051",
                              "blob store gRPC target: host:port, a comma-separated list, or dns:///name:port")
    metadata_addr: str = env("WHARF_METADATA_ADDR", "127.0.0.1:50052", "metadata gRPC target")
    rpc_timeout: float = env("WHARF_RPC_TIMEOUT", 10.0, "deadline in seconds of a unary gRPC call", minimum=0.1)
    transfer_timeout: float = env("WHARF_TRANSFER_TIMEOUT", 3600.0,
                                  "deadline in seconds of a streamed blob transfer", minimum=1)
    local_blob_root: str = env("WHARF_LOCAL_BLOB_ROOT", "",
                               "when set, blobs whose blob-store path lies under this directory are sent "
                               "straight from disk (sendfile) instead of over gRPC")
    manifest_cache_bytes: int = env("WHARF_MANIFEST_CACHE_BYTES", 16 * 1024 * 1024,
                                    "bytes of manifests, blob links and tag pages each gateway worker caches, "
                                    "kept coherent by the metadata service; 0 turns the cache off", minimum=0)
    max_body_bytes: int = env("WHARF_MAX_BODY_BYTES", 1 << 40,
                              "largest request body (and chunk) accepted: a larger Content-Length or chunk "
                              "size is refused at once (413 / 400), never waited on", minimum=1)
    max_manifest_bytes: int = env("WHARF_MAX_MANIFEST_BYTES", 4 * 1024 * 1024, "largest manifest accepted",
                                  minimum=4096, maximum=MAX_MANIFEST_BYTES)
    allow_sparse_manifests: bool = env("WHARF_ALLOW_SPARSE_MANIFESTS", False,
                                       "accept manifests whose layers or child manifests are not in the "
                                       "repository (the spec's optional sparse manifests)")
    tls_cert_file: str = env("WHARF_TLS_CERT_FILE", "",
                             "PEM certificate chain: the gateway serves HTTPS (with WHARF_TLS_KEY_FILE)")
    tls_key_file: str = env("WHARF_TLS_KEY_FILE", "", "PEM private key of that certificate")
    auth: str = env("WHARF_AUTH", "none", "none (no authentication; keep it on loopback) or token",
                    choices=("none", "token"))
    auth_addr: str = env("WHARF_AUTH_ADDR", "127.0.0.1:50053", "auth service gRPC target (token mode)")
    token_service: str = env("WHARF_AUTH_SERVICE", "wharf", "service name in challenges and the tokens' aud")
    token_issuer: str = env("WHARF_AUTH_ISSUER", "wharf-auth", "expected iss claim of tokens")
    public_url: str = env("WHARF_PUBLIC_URL", "",
                          "external base URL of the registry, for the token realm (default: from the request)")
    trusted_proxies: tuple[str, ...] = env("WHARF_TRUSTED_PROXIES", (),
                                           "CIDRs of reverse proxies whose X-Forwarded-For/-Proto/-Host are "
                                           "believed (empty: none)")
    key_refresh: float = env("WHARF_AUTH_KEY_REFRESH", 60.0, "seconds between refreshes of the token keys", minimum=1)
    workers: int = env("WHARF_GATEWAY_WORKERS", 2, "gunicorn worker processes (gevent)", minimum=1)
    worker_connections: int = env("WHARF_WORKER_CONNECTIONS", 10000,
                                  "connections each worker process holds open at once, idle ones included", minimum=1)
    listen_backlog: int = env("WHARF_LISTEN_BACKLOG", 0,
                              "connections the kernel queues for the gateway to accept (0: the system's "
                              "net.core.somaxconn, as Go servers take; gunicorn's own default is 2048)",
                              minimum=0, maximum=1 << 20)
    max_in_flight: int = env("WHARF_MAX_REQUESTS_IN_FLIGHT", 2000,
                             "requests each worker process serves at once; more get 503 with Retry-After", minimum=1)
    header_timeout: float = env("WHARF_HEADER_TIMEOUT", 30.0,
                                "seconds a request head may take from its first byte (and a TLS handshake from "
                                "the accept); then the connection closes", minimum=1)
    idle_timeout: float = env("WHARF_IDLE_TIMEOUT", 60.0,
                              "seconds a read or write on a connection may make no progress before the "
                              "request ends (an upload keeps what was received; the client resumes)", minimum=1)
    keepalive_timeout: int = env("WHARF_KEEPALIVE_TIMEOUT", 75,
                                   "seconds an idle keep-alive connection is kept open", minimum=1)
    ratelimit_lease: float = env("WHARF_RATELIMIT_LEASE", 0.1,
                                 "share of a rate limit's burst each gateway worker takes at once from the shared "
                                 "bucket (about one metadata call per that many requests); the limit holds to within "
                                 "workers x replicas x that share (0: one token per call)", minimum=0.0, maximum=1.0)
    access_log: bool = env("WHARF_ACCESS_LOG", True, "log one line per HTTP request")
    internal_token_file: str = env("WHARF_INTERNAL_TOKEN_FILE", "",
                                   "file holding the secret every internal gRPC call carries (required; "
                                   "make run generates one)")
    instance_id: str = env("WHARF_INSTANCE_ID", "", "echoed in X-Wharf-Instance on /v2/ (make run sets it, to know "
                           "that it reached its own gateway)")
    metrics_addr: str = env("WHARF_METRICS_ADDR", "", "host:port serving Prometheus metrics on /metrics, the figures "
                            "of every worker process in one scrape (empty: off)", address=True)
    otlp_endpoint: str = env("WHARF_OTLP_ENDPOINT", "", "OTLP/HTTP collector base URL traces are exported to "
                             "(e.g. http://127.0.0.1:4318; empty: tracing off)")
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level", choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("WHARF_TLS_CERT_FILE and WHARF_TLS_KEY_FILE go together: set both or neither")
