"""Blob store settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses
import pathlib

from services.common import plugins
from services.common.settings import LOG_LEVELS, SettingsError, env, secret


@dataclasses.dataclass(frozen=True)
class BlobStoreSettings:
    listen: str = env("WHARF_BLOBSTORE_LISTEN", "127.0.0.1:50051", "gRPC address to bind (host:port)")
    storage: str = env("WHARF_STORAGE", "filesystem", "storage driver: filesystem, s3, or the name of an installed "
                       "wharf.storage extension (docs/extending.md)")
    data_dir: pathlib.Path = env("WHARF_DATA_DIR", pathlib.Path("./data"), "root of local data")
    expose_paths: bool = env("WHARF_BLOBSTORE_EXPOSE_PATHS", False,
                             "report blob file paths to co-located gateways, which then serve them "
                             "with sendfile")
    s3_endpoint: str = env("WHARF_S3_ENDPOINT", "", "S3 endpoint host:port (s3 driver)")
    s3_bucket: str = env("WHARF_S3_BUCKET", "wharf", "bucket, created when missing")
    s3_prefix: str = env("WHARF_S3_PREFIX", "", "key prefix inside the bucket")
    s3_region: str = env("WHARF_S3_REGION", "us-east-1", "bucket region")
    s3_access_key: str = env("WHARF_S3_ACCESS_KEY", "", "access key id")
    s3_secret_key: str = env("WHARF_S3_SECRET_KEY", "", "secret key (prefer WHARF_S3_SECRET_KEY_FILE)")
    s3_secret_key_file: str = env("WHARF_S3_SECRET_KEY_FILE", "", "file holding the secret key")
    s3_secure: bool = env("WHARF_S3_SECURE", False, "use TLS to reach the S3 endpoint")
    s3_redirect: bool = env("WHARF_S3_REDIRECT", True,
                            "offer presigned URLs so the gateway answers blob GETs with a 307 redirect")
    s3_redirect_endpoint: str = env("WHARF_S3_REDIRECT_ENDPOINT", "",
                                    "host:port clients reach S3 at, for presigned URLs (default: the endpoint)")
    # SigV4 presigned URLs live from 1 s to 7 days; outside that every presign (each blob GET) failed.
    s3_redirect_ttl: int = env("WHARF_S3_REDIRECT_TTL", 600, "seconds a presigned blob URL stays valid",
                               minimum=1, maximum=7 * 24 * 3600)
    upload_ttl: int = env("WHARF_UPLOAD_TTL", 86400, "seconds an idle upload session lives", minimum=60)
    janitor_interval: int = env("WHARF_UPLOAD_JANITOR_INTERVAL", 600, "seconds between expired-upload sweeps",
                                minimum=1)
    chunk_size: int = env("WHARF_READ_CHUNK", 1024 * 1024, "most bytes per streamed read message (fewer as more "
                          "downloads wait on slow clients)", minimum=64 * 1024, maximum=4 * 1024 * 1024)
    workers: int = env("WHARF_BLOBSTORE_WORKERS", 32,
                       "threads that run storage steps (the gRPC server is asyncio: a transfer holds a thread "
                       "only while a step runs)", minimum=1)
    upstream_workers: int = env("WHARF_BLOBSTORE_UPSTREAM_WORKERS", 32,
                                "threads that wait on mirror upstreams (fills, manifest fetches): a pool apart "
                                "from the storage threads, so slow upstreams cannot hold those", minimum=1)
    internal_token_file: str = env("WHARF_INTERNAL_TOKEN_FILE", "",
                                   "file holding the secret every internal gRPC call carries (required; "
                                   "make run generates one)")
    metrics_addr: str = env("WHARF_BLOBSTORE_METRICS_ADDR", "",
                            "host:port serving Prometheus metrics on /metrics (empty: off)", address=True)
    otlp_endpoint: str = env("WHARF_OTLP_ENDPOINT", "", "OTLP/HTTP collector base URL traces are exported to "
                             "(e.g. http://127.0.0.1:4318; empty: tracing off)")
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level", choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        problem = storage_problem(self.storage)
        if problem:
            raise SettingsError(problem)
        if self.storage == "s3" and not self.s3_endpoint:
            raise SettingsError("WHARF_STORAGE=s3 needs WHARF_S3_ENDPOINT")

    def s3_secret(self) -> str:
        return secret(self.s3_secret_key, self.s3_secret_key_file)


def storage_problem(name: str) -> str | None:
    """Why ``WHARF_STORAGE=name`` cannot be used (None when a driver of that name is installed).
    One message whatever is installed: `wharf-admin plugins` lists the extensions."""
    if name in plugins.names("wharf.storage"):
        return None
    return (f"WHARF_STORAGE={name!r}: expected filesystem or s3, or the name of an installed storage extension "
            "(wharf-admin plugins)")
