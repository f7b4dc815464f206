"""A registry that drips its answers: a capped body must also arrive within a bounded time (a real socket)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from wharf_client import Client, ClientOptions, RegistryOptions, bodies
from wharf_client.errors import RegistryError, TransportError

pytestmark = pytest.mark.e2e

LISTING = b'{"tags":["' + b"a" * 200 + b'"]}'


class Dripping:
    """/v2/ answers at once; every other GET gets ``status`` with a body sent one byte every 0.2 s."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.hung_up = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as reader:
            while line := reader.readline():
                path = line.split(b" ")[1]
                while reader.readline() not in (b"\r\n", b""):
                    pass
                if path == b"/v2/":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    continue
                connection.sendall(b"HTTP/1.1 %d x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                   % (self.status, len(LISTING)))
                try:
                    for byte in LISTING:
                        connection.sendall(bytes([byte]))
                        time.sleep(0.2)
                except OSError:
                    self.hung_up.set()
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def fast_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "BODY_SECONDS", 1.0)


@pytest.fixture()
def client() -> Iterator[Client]:
    options = ClientOptions(default_registry_options=RegistryOptions(plain_http=True), retries=1, backoff=0.01)
    with Client(options) as made:
        yield made


@pytest.mark.usefixtures("fast_deadline")
def test_a_dripping_listing_ends_at_the_deadline(client: Client) -> None:
    server = Dripping(200)  # the listing would take 42 s
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="took longer than 1s to arrive"):
            list(client.repository(f"{server.host}/app").tags())
        assert time.monotonic() - started < 10  # two attempts of about a second each
        assert server.hung_up.wait(5)  # the connection was cut, not left to drip on
    finally:
        server.close()


@pytest.mark.usefixtures("fast_deadline")
def test_a_dripping_error_body_is_cut_and_still_reported(client: Client) -> None:
    server = Dripping(404)
    try:
        started = time.monotonic()
        with pytest.raises(RegistryError, match="HTTP 404"):
            list(client.repository(f"{server.host}/app").tags())
        assert time.monotonic() - started < 10
    finally:
        server.close()
