"""wharf-gc's own settings (it also reads the metadata service's and the blob store's)."""

from __future__ import annotations

import dataclasses

from services.common.settings import env


@dataclasses.dataclass(frozen=True)
class GcSettings:
    blobstore_addr: str = env("WHARF_BLOBSTORE_ADDR", "127.0.0.1:50051",
                              "blob store gRPC target(s), comma-separated: blob deletes go through it")
    metadata_addr: str = env("WHARF_METADATA_ADDR", "127.0.0.1:50052",
                             "metadata service gRPC target: what the collector removes, it removes through it")
    internal_token_file: str = env("WHARF_INTERNAL_TOKEN_FILE", "",
                                   "file holding the secret every internal gRPC call carries (required; "
                                   "make run generates one)")
