"""`wharf-blobstore`: runs the blob store gRPC service until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.blobstore.server import build
from services.blobstore.settings import BlobStoreSettings
from services.common import logs
from services.common.grpcserver import serve_until_signal
from services.common.settings import load


def main() -> None:
    settings = load(BlobStoreSettings, os.environ)
    logs.configure(settings.log_level)
    server, port, health, stop = build(settings)
    logging.getLogger("wharf.blobstore").info("listening", extra={"fields": {"port": port,
                                                                               "storage": settings.storage}})
    try:
        serve_until_signal(server, health)
    finally:
        stop.set()


if __name__ == "__main__":
    main()
