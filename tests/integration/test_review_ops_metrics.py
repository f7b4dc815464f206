"""A service's /metrics endpoint (services/common/metrics_endpoint.py) against clients that open
connections and never finish a request (hostile review of the operations surfaces)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.common import metrics, metrics_endpoint


@pytest.fixture()
def endpoint() -> Iterator[tuple[Any, str]]:
    server, port = metrics_endpoint.serve("127.0.0.1:0", metrics.registry_for("metadata"))
    yield server, f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def _threads() -> int:
    return threading.active_count()


def test_idle_connections_cannot_pile_up_threads(endpoint: tuple[Any, str]) -> None:
    _, address = endpoint
    host, port = address.split(":")
    before = _threads()
    idle = []
    for _ in range(100):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest of the head
        idle.append(sock)
    time.sleep(1)
    try:
        assert _threads() - before <= metrics_endpoint.MAX_CONNECTIONS + 2, _threads() - before
    finally:
        for sock in idle:
            sock.close()
    # Once they are gone, a scrape is served.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert "wharf_build_info" in metrics_endpoint.scrape(address)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout(endpoint: tuple[Any, str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_endpoint._Handler, "timeout", 0.5)
    _, address = endpoint
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, unanswered
        assert time.monotonic() - started < 5


def test_a_scrape_still_reads_the_registry(endpoint: tuple[Any, str]) -> None:
    _, address = endpoint
    text = metrics_endpoint.scrape(address)
    assert 'wharf_build_info{service="metadata"' in text
    assert "process_open_fds" in text
