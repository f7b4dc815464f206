"""`wharf-auth`: runs the auth gRPC service until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.auth.server import build
from services.auth.settings import AuthSettings
from services.common import logs
from services.common.grpcserver import serve_until_signal
from services.common.settings import load


def main() -> None:
    settings = load(AuthSettings, os.environ)
    logs.configure(settings.log_level)
    server, port, health = build(settings)
    logging.getLogger("wharf.auth").info("listening", extra={"fields": {"port": port}})
    serve_until_signal(server, health)


if __name__ == "__main__":
    main()
