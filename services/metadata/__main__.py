"""`wharf-metadata`: runs the metadata gRPC service until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.common import logs
from services.common.grpcserver import serve_until_signal
from services.common.settings import load
from services.metadata.server import build
from services.metadata.settings import MetadataSettings


def main() -> None:
    settings = load(MetadataSettings, os.environ)
    logs.configure(settings.log_level)
    server, port, health = build(settings)
    logging.getLogger("wharf.metadata").info("listening", extra={"fields": {"port": port}})
    serve_until_signal(server, health)


if __name__ == "__main__":
    main()
