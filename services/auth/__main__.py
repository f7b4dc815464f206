"""`wharf-auth`: runs the auth gRPC service until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.auth.server import run
from services.auth.settings import AuthSettings
from services.common import logs
from services.common.settings import load_or_exit, service_main
from services.mirror import config as mirror_config


@service_main("wharf-auth")
def main() -> None:
    settings = load_or_exit(AuthSettings, os.environ, "wharf-auth")
    try:
        mirrors = mirror_config.load(os.environ, secrets=False)  # who may pull mirrored repositories
    except mirror_config.MirrorsError as exc:
        raise SystemExit(f"wharf-auth: {exc}") from None
    logs.configure(settings.log_level)
    run(settings, on_port=lambda port: logging.getLogger("wharf.auth").info(
        "listening", extra={"fields": {"port": port}}), mirrors=mirrors, environ=os.environ)


if __name__ == "__main__":
    main()
