"""A hostile review of the pull-through cache: a fill must go at its upstream's pace, not at the
pace of the client that happened to ask first.

Before: the first pull of a blob streamed the fill at its client's pace. A client that opened the
pull and stopped reading held every other pull of that blob waiting until the gateway gave up on
it (``WHARF_IDLE_TIMEOUT``, 60 s here), and the fill then started over; one reading ~20 KB/s held
them for up to 30 minutes, then ``503``. Now a copier goes on alone once its caller is late
(services/blobstore/fills.py ``LAG``): the others get the blob as soon as the upstream sent it, and
the slow client still gets every byte (the rest from the stored blob).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import requests

from services.blobstore import fills
from tests.support.stack import RunningStack

BLOB = os.urandom(1024 * 1024) * 32  # far more than the sockets and gRPC windows between hold
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PACED = os.urandom(1024 * 1024) * 32  # another blob, for the client that reads steadily but slowly
PACED_DIGEST = "sha256:" + hashlib.sha256(PACED).hexdigest()


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gets: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        found = self.path.endswith((f"/blobs/{DIGEST}", f"/blobs/{PACED_DIGEST}"))
        body = (BLOB if DIGEST in self.path else PACED) if found else b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'
        if found:
            self.gets.append(self.path)
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., RunningStack], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    mirrors = tmp_path_factory.mktemp("mirrors") / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://127.0.0.1:{server.server_address[1]}\n"
                       "    insecure: true\n")
    yield start_stack(env={"WHARF_MIRRORS_FILE": str(pathlib.Path(mirrors))})
    server.shutdown()
    server.server_close()


def _read_response(sock: socket.socket) -> bytes:
    """The body of a response with Content-Length read off ``sock`` (the head already sent)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        more = sock.recv(1024 * 1024)
        assert more, f"the body ended after {len(body)} of {length} bytes"
        body += more
    return body


def test_a_client_that_stops_reading_holds_no_other_pull_of_the_blob(stack: RunningStack) -> None:
    stalled = socket.create_connection((stack.host.split(":")[0], stack.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    stalled.sendall(f"GET /v2/up.example/team/app/blobs/{DIGEST} HTTP/1.1\r\nHost: {stack.host}\r\n\r\n".encode())
    try:
        time.sleep(1)  # the stalled pull leads the fill (one upstream GET so far)
        assert len(_Upstream.gets) == 1
        started = time.monotonic()
        other = requests.get(f"{stack.url}/v2/up.example/team/other/blobs/{DIGEST}", timeout=120)
        waited = time.monotonic() - started
        assert other.status_code == 200 and other.content == BLOB
        assert waited < fills.LAG + 15, f"waited {waited:.1f} s for a client that stopped reading"
        assert len(_Upstream.gets) == 1  # fetched once: the others took the stored blob
        # The stalled client reads again: every byte, the rest from the stored blob.
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        stalled.settimeout(60)
        assert _read_response(stalled) == BLOB
    finally:
        stalled.close()


def test_a_client_reading_slowly_sets_the_pace_of_no_other_pull_of_the_blob(stack: RunningStack) -> None:
    """A first client reading at 512 KiB/s takes every chunk well within LAG, so the copier kept to
    its pace: a second client of the same blob (a node pool scaling up behind the mirror) waited for
    the whole fill at that pace (~60 s for 32 MiB). Once another asker waits, the fill goes at the
    upstream's pace: the second pull is done in seconds, and the slow client still gets every byte."""
    slow = socket.create_connection((stack.host.split(":")[0], stack.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.sendall(f"GET /v2/up.example/team/slow/blobs/{PACED_DIGEST} HTTP/1.1\r\nHost: {stack.host}\r\n\r\n"
                 .encode())
    received = bytearray()
    stop = threading.Event()

    def read_slowly() -> None:
        while not stop.is_set():
            piece = slow.recv(65536)
            if not piece:
                return
            received.extend(piece)
            time.sleep(0.125)  # 512 KiB/s at most

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        other = requests.get(f"{stack.url}/v2/up.example/team/crowd/blobs/{PACED_DIGEST}", timeout=120)
        waited = time.monotonic() - started
        assert other.status_code == 200 and other.content == PACED
        assert waited < 20, f"waited {waited:.1f} s for the pace of a slow client"
        assert len([g for g in _Upstream.gets if PACED_DIGEST in g]) == 1
    finally:
        stop.set()
        reader.join(10)
    slow.settimeout(60)
    data = bytes(received)
    while b"\r\n\r\n" not in data:
        data += slow.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    while len(body) < len(PACED):
        more = slow.recv(1024 * 1024)
        assert more, f"the body ended after {len(body)} bytes"
        body += more
    slow.close()
    assert head.startswith(b"HTTP/1.1 200") and body == PACED
