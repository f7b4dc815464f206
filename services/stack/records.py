"""What `make run` records in its data directory, so that the tools run beside it (wharf-gc,
wharf-admin) find the running stack without being told: one name for each fact, here."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

REDIS_URL = "redis/url"  # the Redis the runner started
AUTH_ADDRESS = "auth/address"  # the auth service (token mode)
BLOBSTORE_ADDRESS = "blobstore.address"  # the blob stores, comma-separated
METADATA_ADDRESS = "metadata.address"  # the metadata service
INTERNAL_TOKEN = "internal-token"  # the secret every internal gRPC call carries (owner-only)
METRICS = "metrics.json"  # service name -> host:port of its /metrics
ADMIN_PASSWORD = "admin-password"  # the first admin's, generated when none was given (owner-only)


def write(data_dir: pathlib.Path, record: str, value: str) -> None:
    """Writes the record whole, then renames it into place: a reader never sees half of one."""
    path = data_dir / record
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(value + "\n")
    partial.replace(path)


def read(data_dir: pathlib.Path, record: str) -> str | None:
    path = data_dir / record
    return path.read_text().strip() if path.is_file() else None


def setting(environ: Mapping[str, str], variable: str, data_dir: pathlib.Path, record: str, default: str) -> str:
    """``variable`` when it is set, else what `make run` recorded, else ``default``."""
    if environ.get(variable):
        return environ[variable]
    return read(data_dir, record) or default
