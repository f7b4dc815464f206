"""Where the registry's Redis, metadata service and blob store are, and the internal secret.

Each comes from its command-line option, else its environment variable (the same names the
services use), else what `make run` recorded in ``$WHARF_DATA_DIR`` (services/stack/records.py),
else the services' default port: next to `make run` no flag is needed.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

from services.common.internal_auth import TOKEN_VARIABLE
from services.stack import records

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_METADATA_ADDR = "127.0.0.1:50052"
DEFAULT_BLOBSTORE_ADDR = "127.0.0.1:50051"


@dataclasses.dataclass(frozen=True)
class Targets:
    redis_url: str
    metadata_addr: str
    blobstore_addr: str  # one blob store (they share the storage): the first of a comma-separated list
    token_file: str


def data_dir(environ: Mapping[str, str]) -> pathlib.Path:
    return pathlib.Path(environ.get("WHARF_DATA_DIR") or "./data")


def locate(environ: Mapping[str, str], redis_url: str | None = None, metadata_addr: str | None = None,
           blobstore_addr: str | None = None) -> Targets:
    """The targets: the arguments given, else the environment, else `make run`'s records, else defaults."""
    where = data_dir(environ)
    blobstores = blobstore_addr or records.setting(environ, "WHARF_BLOBSTORE_ADDR", where, records.BLOBSTORE_ADDRESS,
                                                   DEFAULT_BLOBSTORE_ADDR)
    return Targets(
        redis_url=redis_url or records.setting(environ, "WHARF_REDIS_URL", where, records.REDIS_URL,
                                               DEFAULT_REDIS_URL),
        metadata_addr=metadata_addr or records.setting(environ, "WHARF_METADATA_ADDR", where,
                                                       records.METADATA_ADDRESS, DEFAULT_METADATA_ADDR),
        blobstore_addr=blobstores.split(",")[0].strip(),
        token_file=environ.get(TOKEN_VARIABLE) or str(where / records.INTERNAL_TOKEN))
