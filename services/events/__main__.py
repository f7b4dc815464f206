"""`wharf-events`: delivers the event outbox to the configured endpoints until SIGTERM."""

from __future__ import annotations

import logging
import os

from services.common import logs, plugins
from services.common.settings import load_or_exit, service_main
from services.events import config, sinks
from services.events.server import run
from services.events.settings import EventsSettings


@service_main("wharf-events")
def main() -> None:
    settings = load_or_exit(EventsSettings, os.environ, "wharf-events")
    try:
        events = config.load(os.environ)
        for endpoint in events.active:  # before anything starts: a missing or broken sink, or a sink
            sinks.check(endpoint)       # that refuses its options, stops it here, in one line
    except (config.EventsError, plugins.PluginError) as exc:
        raise SystemExit(f"wharf-events: {exc}") from None
    logs.configure(settings.log_level)
    log = logging.getLogger("wharf.events")
    if not events.enabled:
        log.warning("no event endpoint is configured (WHARF_EVENTS_FILE or events: in WHARF_CONFIG): "
                    "nothing will be delivered")
    elif not settings.public_url:
        log.warning("WHARF_PUBLIC_URL is not set: each event's target.url and source.addr are built from "
                    "the Host header of the request that caused it, which the client chooses; set it to "
                    "the registry's external URL")
    run(settings, events, on_port=lambda port: log.info("listening", extra={"fields": {"port": port}}))


if __name__ == "__main__":
    main()
