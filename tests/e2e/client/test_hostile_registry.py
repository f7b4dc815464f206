"""Answers only a real socket can give: the ``wharf`` command against a tiny misbehaving HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.client.conftest import Result

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]


class _ConflictingLength(BaseHTTPRequestHandler):
    """/v2/ answers 200; everything else carries two Content-Length headers that disagree."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"tags":["a"]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.path != "/v2/":
            self.send_header("Content-Length", str(len(body) + 1))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def conflicting_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ConflictingLength)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_conflicting_content_lengths_are_a_transport_error_naming_the_url(conflicting_registry: str,
                                                                         wharf_cli: Cli) -> None:
    result = wharf_cli("tags", f"{conflicting_registry}/x", expect=5)
    assert f"GET http://{conflicting_registry}/v2/x/tags/list" in result.err
    assert "Content-Length" in result.err
