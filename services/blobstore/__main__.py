"""`wharf-blobstore`: runs the blob store gRPC service (asyncio) until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.blobstore import storage
from services.blobstore.server import run
from services.blobstore.settings import BlobStoreSettings
from services.common import logs, plugins
from services.common.config_file import ConfigFileError
from services.common.settings import load_or_exit, service_main
from services.mirror import config as mirror_config


@service_main("wharf-blobstore")
def main() -> None:
    settings = load_or_exit(BlobStoreSettings, os.environ, "wharf-blobstore")
    try:
        mirrors = mirror_config.load(os.environ)
        storage.driver_class(settings.storage)  # before anything starts: a missing or broken driver stops it here
        storage.options(os.environ)
    except (mirror_config.MirrorsError, plugins.PluginError, ConfigFileError) as exc:
        raise SystemExit(f"wharf-blobstore: {exc}") from None
    logs.configure(settings.log_level)
    run(settings, on_port=lambda port: logging.getLogger("wharf.blobstore").info(
        "listening", extra={"fields": {"port": port, "storage": settings.storage,
                                       "mirrors": [u.prefix for u in mirrors.upstreams]}}), mirrors=mirrors)


if __name__ == "__main__":
    main()
