"""Blob store settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses
import pathlib

from services.common.settings import env


@dataclasses.dataclass(frozen=True)
class BlobStoreSettings:
    listen: str = env("WHARF_BLOBSTORE_LISTEN", "127.0.0.1:50051", "gRPC address to bind (host:port)")
    storage: str = env("WHARF_STORAGE", "filesystem", "storage driver: filesystem")
    data_dir: pathlib.Path = env("WHARF_DATA_DIR", pathlib.Path("./data"), "root of local data")
    expose_paths: bool = env("WHARF_BLOBSTORE_EXPOSE_PATHS", False,
                             "report blob file paths to co-located gateways, which then serve them "
                             "with sendfile")
    upload_ttl: int = env("WHARF_UPLOAD_TTL", 86400, "seconds an idle upload session lives")
    janitor_interval: int = env("WHARF_UPLOAD_JANITOR_INTERVAL", 600, "seconds between expired-upload sweeps")
    chunk_size: int = env("WHARF_READ_CHUNK", 1024 * 1024, "bytes per streamed read message")
    workers: int = env("WHARF_BLOBSTORE_WORKERS", 32, "gRPC worker threads")
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level")
