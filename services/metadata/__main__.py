"""`wharf-metadata`: runs the metadata gRPC service until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.common import config_file, governance, logs
from services.common.settings import load_or_exit, service_main
from services.events import config as events_config
from services.metadata.server import run
from services.metadata.settings import MetadataSettings


@service_main("wharf-metadata")
def main() -> None:
    settings = load_or_exit(MetadataSettings, os.environ, "wharf-metadata")
    logs.configure(settings.log_level)
    events_on = settings.events_outbox == "on"
    if settings.events_outbox == "auto":
        try:
            events_on = events_config.load(os.environ, secrets=False).enabled
        except events_config.EventsError as exc:
            raise SystemExit(f"wharf-metadata: {exc}") from None
    try:
        file_policy = governance.load_file(os.environ)  # immutable tags, quotas, retention (issue 19)
    except (governance.PolicyError, config_file.ConfigFileError) as exc:
        raise SystemExit(f"wharf-metadata: {exc}") from None
    log = logging.getLogger("wharf.metadata")
    log.info("event outbox", extra={"fields": {"on": events_on}})
    run(settings, on_port=lambda port: log.info("listening", extra={"fields": {"port": port}}), events_on=events_on,
        file_policy=file_policy)


if __name__ == "__main__":
    main()
