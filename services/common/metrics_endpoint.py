"""Serving a registry's figures on ``/metrics`` at a service's own address.

The gRPC services run one process each: a small threaded HTTP server (prometheus-client's WSGI
application), in a daemon thread beside the asyncio loop, serves their registry. (The gateway runs
several processes and aggregates them: services/api/metrics_hub.py.) The endpoint serves nothing
else, so it may listen where the registry's port does not (a separate port a scraper reaches, off
by default).

prometheus-client's own ``start_http_server`` gives every connection a thread for as long as the
client keeps it open, without a timeout: 300 connections that never finished their request held
300 threads in the metadata service for good. Here a connection has ``READ_SECONDS`` to send its
request, and at most ``MAX_CONNECTIONS`` are served at once; more are closed unanswered (a
scraper asks once per interval).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from services.common.settings import split_address

READ_SECONDS = 10.0
MAX_CONNECTIONS = 32


class _Handler(WSGIRequestHandler):
    timeout = READ_SECONDS  # each read and write of the connection (socketserver applies it)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape is not worth a log line


class _Server(WSGIServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` of them."""

    daemon_threads = True
    request_queue_size = 64  # listen(2) backlog: connections arriving together wait, not time out

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: closed at once, the scraper tries again
            return
        thread = threading.Thread(target=self._serve, args=(request, client_address), daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread could be made
            self._slots.release()
            self.shutdown_request(request)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away, or timed out: nothing to report


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(address: str, registry: CollectorRegistry) -> tuple[Any, int]:
    """Starts serving ``registry`` at ``address`` (host:port; port 0 picks one); returns the
    server (``shutdown()`` stops it) and the port it bound."""
    host, port = split_address(address)
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="metrics-endpoint", daemon=True).start()
    return server, int(server.server_port)


def scrape(address: str, timeout: float = 5.0) -> str:
    """The exposition text at ``http://address/metrics`` (for wharf-admin status and the tests)."""
    import requests

    answer = requests.get(f"http://{address}/metrics", timeout=timeout)
    answer.raise_for_status()
    return answer.text
