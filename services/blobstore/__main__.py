"""`wharf-blobstore`: runs the blob store gRPC service (asyncio) until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.blobstore.server import run
from services.blobstore.settings import BlobStoreSettings
from services.common import logs
from services.common.settings import load_or_exit


def main() -> None:
    settings = load_or_exit(BlobStoreSettings, os.environ, "wharf-blobstore")
    logs.configure(settings.log_level)
    run(settings, on_port=lambda port: logging.getLogger("wharf.blobstore").info(
        "listening", extra={"fields": {"port": port, "storage": settings.storage}}))


if __name__ == "__main__":
    main()
