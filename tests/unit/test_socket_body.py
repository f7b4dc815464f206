"""wire.SocketBody against gunicorn's own body objects over a real socket pair: it reads exactly
the body, leaves what follows it for gunicorn, keeps gunicorn's state and the byte count current."""

from __future__ import annotations

import socket
import threading

import pytest
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from services.api.http_metrics import CountingInput
from services.api.wire import SocketBody


def _body(sock: socket.socket, length: int, buffered: bytes = b"") -> tuple[dict, Body, SocketUnreader]:
    unreader = SocketUnreader(sock)
    if buffered:
        unreader.unread(buffered)  # what gunicorn read past the head
    body = Body(LengthReader(unreader, length))
    return {"wsgi.input": CountingInput(body), "gunicorn.socket": sock}, body, unreader


def _send_later(sock: socket.socket, data: bytes, close: bool = False) -> threading.Thread:
    def send() -> None:
        for start in range(0, len(data), 70_000):
            sock.sendall(data[start:start + 70_000])
        if close:
            sock.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _read_all(direct: SocketBody, piece: int) -> bytes:
    out = bytearray()
    while got := direct.read(piece):
        assert len(got) <= piece
        out += got
    return bytes(out)


def test_the_body_is_read_whole_and_what_follows_stays_for_gunicorn(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    data = bytes(i % 253 for i in range(3 * 1024 * 1024 + 17))
    following = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    environ, body, unreader = _body(ours, len(data), buffered=data[:5000])
    sender = _send_later(theirs, data[5000:] + following)
    direct = SocketBody.of(environ)
    assert direct is not None
    assert _read_all(direct, 1024 * 1024) == data
    sender.join(5)
    assert body.reader.length == 0
    assert environ["wsgi.input"].received == len(data)
    assert body.read() == b""  # gunicorn finds the body consumed...
    assert unreader.read() == following  # ...and the next request where it starts
    assert not body.failed


def test_a_body_shorter_than_what_gunicorn_buffered_leaves_the_rest(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    environ, _, unreader = _body(ours, 10, buffered=b"0123456789NEXT REQUEST")
    direct = SocketBody.of(environ)
    assert direct is not None
    assert direct.read(4) == b"0123"
    assert direct.read(100) == b"456789"
    assert direct.read(100) == b""
    assert unreader.read() == b"NEXT REQUEST"


def test_a_client_that_closes_early_gets_a_short_body(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    environ, _, _ = _body(ours, 1000)
    _send_later(theirs, b"x" * 300, close=True).join(5)
    direct = SocketBody.of(environ)
    assert direct is not None
    assert _read_all(direct, 4096) == b"x" * 300
    assert environ["wsgi.input"].received == 300


def test_a_read_that_fails_marks_the_body_failed(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    ours.settimeout(0.2)
    environ, body, _ = _body(ours, 1000)
    theirs.sendall(b"y" * 10)
    direct = SocketBody.of(environ)
    assert direct is not None
    with pytest.raises(TimeoutError):
        direct.read(1000)
    assert body.failed  # gunicorn will not reuse the connection
    assert body.reader.length == 990


def test_other_bodies_are_left_to_gunicorns_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    unreader = SocketUnreader(ours)
    chunked = {"wsgi.input": Body(ChunkedReader(object(), unreader)), "gunicorn.socket": ours}
    assert SocketBody.of(chunked) is None
    environ, body, _ = _body(ours, 10)
    body.buf.write(b"already read")
    assert SocketBody.of(environ) is None
    assert SocketBody.of({"wsgi.input": environ["wsgi.input"]}) is None  # no socket: another server
