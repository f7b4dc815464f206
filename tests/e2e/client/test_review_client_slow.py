"""A registry that drips its answers: a capped body must also arrive within a bounded time (a real socket)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from wharf_client import Client, ClientOptions, RegistryOptions, bodies
from wharf_client.errors import RegistryError, TransportError
from wharf_client.manifest import Descriptor
from wharf_client.mediatypes import OCTET_STREAM

pytestmark = pytest.mark.e2e

LISTING = b'{"tags":["' + b"a" * 200 + b'"]}'


class Server:
    """A loopback HTTP server of a few lines: each connection served by ``_serve`` in a thread."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class Dripping(Server):
    """/v2/ answers at once; every other GET gets ``status`` with a body sent one byte every 0.2 s."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.hung_up = threading.Event()
        super().__init__()

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


class SlowBlob(Server):
    """Serves one blob (``Range: bytes=N-`` honoured); the first ``slow`` GETs of it get its body at
    ``rate`` bytes per second, the others at once."""

    def __init__(self, data: bytes, slow: int, rate: float = 50.0) -> None:
        self.data, self.slow, self.rate = data, slow, rate
        self.ranges: list[int] = []
        self._lock = threading.Lock()
        super().__init__()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as reader:
            while line := reader.readline():
                path, start = line.split(b" ")[1], 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"range: bytes="):
                        start = int(header.split(b"=")[1].split(b"-")[0])
                if path == b"/v2/":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    continue
                with self._lock:
                    self.ranges.append(start)
                    slow, self.slow = self.slow > 0, self.slow - 1
                body = self.data[start:]
                status = b"206 Partial Content" if start else b"200 OK"
                connection.sendall(b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, len(body)))
                try:
                    if not slow:
                        connection.sendall(body)
                        continue
                    for offset in range(0, len(body), 5):
                        connection.sendall(body[offset:offset + 5])
                        time.sleep(5 / self.rate)
                except OSError:
                    return


def slow_floor_client() -> Client:
    return Client(ClientOptions(default_registry_options=RegistryOptions(plain_http=True), retries=1,
                                backoff=0.01, min_speed=1000, min_speed_window=0.5))


def test_a_download_below_the_speed_floor_resumes_on_a_new_connection() -> None:
    data = os.urandom(200_000)
    server = SlowBlob(data, slow=2)  # 50 bytes/s: 200 KB would take more than an hour
    descriptor = Descriptor(OCTET_STREAM, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    try:
        with slow_floor_client() as client:
            started = time.monotonic()
            with client.repository(f"{server.host}/app").open_blob(descriptor) as reader:
                assert reader.read() == data  # digest checked at the end
        assert time.monotonic() - started < 10
        # Two dropped connections, each resumed where its kept bytes ended.
        assert len(server.ranges) == 3 and server.ranges[0] == 0 and server.ranges == sorted(server.ranges)
    finally:
        server.close()


def test_a_download_that_stays_below_the_speed_floor_gives_up() -> None:
    data = os.urandom(200_000)
    server = SlowBlob(data, slow=100)
    descriptor = Descriptor(OCTET_STREAM, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    try:
        with slow_floor_client() as client:
            started = time.monotonic()
            with pytest.raises(TransportError, match="stayed slower than 1000 bytes/s"), \
                    client.repository(f"{server.host}/app").open_blob(descriptor) as reader:
                reader.read()
        assert time.monotonic() - started < 15  # six windows of half a second, and the reconnections
    finally:
        server.close()


def test_a_slow_reader_is_not_a_slow_download() -> None:
    """The floor counts the time spent waiting for bytes, not the caller's own pace."""
    data = os.urandom(300_000)
    server = SlowBlob(data, slow=0)
    descriptor = Descriptor(OCTET_STREAM, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    try:
        with slow_floor_client() as client, client.repository(f"{server.host}/app").open_blob(descriptor) as reader:
            parts = []
            while part := reader.read(30_000):
                parts.append(part)
                time.sleep(0.2)  # 2 s in all: the bytes wait for the caller, not the other way round
        assert b"".join(parts) == data and server.ranges == [0]
    finally:
        server.close()
