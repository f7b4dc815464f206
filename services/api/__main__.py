"""`wharf-gateway`: serves the registry HTTP API with gunicorn's gevent workers (services/api/worker.py)."""

# Before anything else imports socket, ssl or threading: the gateway runs on gevent, and
# the app is built in the master before the workers fork, so the master is patched too.
from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from gunicorn.app.base import BaseApplication  # noqa: E402

from services.api import admission as admission_config  # noqa: E402
from services.api import wire  # noqa: E402
from services.api.app import create_app  # noqa: E402
from services.api.metrics_hub import MetricsHub  # noqa: E402
from services.api.server_log import GatewayLog  # noqa: E402
from services.api.settings import GatewaySettings  # noqa: E402
from services.api.worker import (  # noqa: E402
    listen_backlog,
    raise_open_file_limit,
    record_request,
    worker_class,
    worker_exiting,
)
from services.common import config_file, logs, plugins  # noqa: E402
from services.common.settings import load_or_exit, service_main  # noqa: E402
from services.events import config as events_config  # noqa: E402
from services.mirror import config as mirror_config  # noqa: E402


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app


@service_main("wharf-gateway")
def main() -> None:
    settings = load_or_exit(GatewaySettings, os.environ, "wharf-gateway")
    try:
        mirrors = mirror_config.load(os.environ, secrets=False)
        pull_share = events_config.load(os.environ, secrets=False).pull_share  # what share of pulls to record
        admission = admission_config.load(os.environ)
    except (config_file.ConfigFileError, plugins.PluginError) as exc:
        raise SystemExit(f"wharf-gateway: {exc}") from None
    logs.configure(settings.log_level)
    wire.install(settings.max_body_bytes, settings.access_log)
    # Every connection is a file descriptor: say how many this gateway may hold.
    logging.getLogger("wharf.gateway").debug("open-file limit", extra={"fields": {"limit": raise_open_file_limit()}})
    hub = MetricsHub(settings.metrics_addr) if settings.metrics_addr else None
    options: dict[str, Any] = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": worker_class(settings.header_timeout, settings.idle_timeout, hub, settings.otlp_endpoint),
        # Connections each worker holds open at once (idle keep-alive ones included).
        "worker_connections": settings.worker_connections,
        "backlog": listen_backlog(settings.listen_backlog),
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": settings.keepalive_timeout,
        # gunicorn's own lines (booting, workers) are start-up chatter: warnings and up, unless
        # debugging; in JSON, as every other line (server_log.py).
        "loglevel": "debug" if settings.log_level == "debug" else "warning",
        "logger_class": GatewayLog,
        "accesslog": None,
        "proc_name": "wharf-gateway",
        # gunicorn's control socket lives at one fixed path per user; two gateways would collide.
        "control_socket_disable": True,
        # X-Forwarded-Proto is believed from these peers only (the same rule as the client address).
        "forwarded_allow_ips": ",".join(settings.trusted_proxies),
    }
    # Every request's figures, once its answer is sent; each worker's last ones when it exits.
    options.update(post_request=record_request, worker_exit=worker_exiting)
    if hub is not None:
        # The master serves the whole gateway's figures; a forked worker must not answer there.
        options.update(when_ready=lambda _arbiter: hub.start(), post_fork=lambda _a, _w: hub.forget_in_child(),
                       child_exit=lambda _a, worker: hub.worker_exited(worker.pid), on_exit=lambda _a: hub.close())
    if settings.tls_cert_file:
        # Blobs then leave through the TLS socket in 1 MiB reads instead of sendfile.
        options.update(certfile=settings.tls_cert_file, keyfile=settings.tls_key_file)
    _Gunicorn(create_app(settings, mirrors=mirrors, pull_share=pull_share, admission=admission), options).run()


if __name__ == "__main__":
    main()
