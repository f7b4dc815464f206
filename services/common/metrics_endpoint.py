"""Serving a registry's figures on ``/metrics`` at a service's own address.

The gRPC services run one process each: prometheus-client's own HTTP server, in a daemon
thread beside the asyncio loop, serves their registry. (The gateway runs several processes and
aggregates them: services/api/metrics_hub.py.) The endpoint serves nothing else, so it may
listen where the registry's port does not (a separate port a scraper reaches, off by default).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from services.common.settings import split_address


def serve(address: str, registry: CollectorRegistry) -> tuple[Any, int]:
    """Starts serving ``registry`` at ``address`` (host:port; port 0 picks one); returns the
    server (``shutdown()`` stops it) and the port it bound."""
    host, port = split_address(address)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)


def scrape(address: str, timeout: float = 5.0) -> str:
    """The exposition text at ``http://address/metrics`` (for wharf-admin status and the tests)."""
    import requests

    answer = requests.get(f"http://{address}/metrics", timeout=timeout)
    answer.raise_for_status()
    return answer.text
