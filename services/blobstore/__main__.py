"""`wharf-blobstore`: runs the blob store gRPC service (asyncio) until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.blobstore.server import run
from services.blobstore.settings import BlobStoreSettings
from services.common import logs
from services.common.settings import load


def main() -> None:
    settings = load(BlobStoreSettings, os.environ)
    logs.configure(settings.log_level)
    run(settings, on_port=lambda port: logging.getLogger("wharf.blobstore").info(
        "listening", extra={"fields": {"port": port, "storage": settings.storage}}))


if __name__ == "__main__":
    main()
