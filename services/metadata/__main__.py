"""`wharf-metadata`: runs the metadata gRPC service until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.common import logs
from services.common.settings import load_or_exit
from services.metadata.server import run
from services.metadata.settings import MetadataSettings


def main() -> None:
    settings = load_or_exit(MetadataSettings, os.environ, "wharf-metadata")
    logs.configure(settings.log_level)
    run(settings, on_port=lambda port: logging.getLogger("wharf.metadata").info(
        "listening", extra={"fields": {"port": port}}))


if __name__ == "__main__":
    main()
