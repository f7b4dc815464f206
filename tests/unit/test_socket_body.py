"""wire.SocketBody against gunicorn's own body objects over a real socket pair: it reads exactly
the body, leaves what follows it for gunicorn, keeps gunicorn's state and the byte count current."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

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


@pytest.fixture()
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection (the kernel honours a low-water mark on TCP, not on a socketpair)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.settimeout(5)
    yield ours, theirs
    ours.close()
    theirs.close()


def _waiting(direct: SocketBody, size: int) -> tuple[threading.Thread, list[BaseException | int | None]]:
    """wait_ready in a thread; its outcome: what it said can be read now, or what it raised."""
    outcome: list[BaseException | int | None] = []

    def wait() -> None:
        try:
            outcome.append(direct.wait_ready(size))
        except BaseException as exc:
            outcome.append(exc)
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


def test_a_slow_body_gathers_in_the_kernel_until_a_whole_piece_is_there(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """The worker holds no buffer while a client sends: it wakes once the piece is there."""
    ours, theirs = tcp_pair
    environ, _, _ = _body(ours, 300_000)
    direct = SocketBody.of(environ)
    assert direct is not None
    theirs.sendall(b"a" * 20_000)  # well under the piece (the kernel wakes early only when its buffer fills)
    waiter, outcome = _waiting(direct, 64 * 1024)
    waiter.join(0.6)
    assert waiter.is_alive(), "woke before the piece was there"
    theirs.sendall(b"b" * 50_000)
    waiter.join(3)
    assert outcome == [64 * 1024]
    assert direct.read(64 * 1024) == b"a" * 20_000 + b"b" * (64 * 1024 - 20_000)
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1  # left as it was


@pytest.mark.parametrize(("length", "sent", "close"), [(5000, 5000, False), (1 << 20, 300, True)],
                         ids=["the rest of the body", "the client closed"])
def test_the_wait_ends_with_the_body_or_the_clients_close(tcp_pair: tuple[socket.socket, socket.socket],
                                                          length: int, sent: int, close: bool) -> None:
    """Asked for more than is left, the rest is enough; a client that closes ends the wait (the
    caller then reports the body cut short)."""
    ours, theirs = tcp_pair
    environ, _, _ = _body(ours, length)
    direct = SocketBody.of(environ)
    assert direct is not None
    theirs.sendall(b"x" * sent)
    if close:
        theirs.shutdown(socket.SHUT_WR)
    waiter, outcome = _waiting(direct, 1 << 20)
    waiter.join(3)
    assert outcome == [sent]  # what can be read without waiting: all that came
    assert direct.read(1 << 20) == b"x" * sent


def test_a_trickle_is_not_idle_but_silence_is(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """The idle timeout counts bytes, not pieces: a client that sends a byte within each idle
    period is waited for; one that goes silent ends the wait, and the body is failed."""
    ours, theirs = tcp_pair
    ours.settimeout(0.6)
    environ, body, _ = _body(ours, 1 << 20)
    direct = SocketBody.of(environ)
    assert direct is not None
    waiter, outcome = _waiting(direct, 64 * 1024)
    for _ in range(6):  # 1.8 s in all, three idle timeouts
        theirs.sendall(b"z")
        waiter.join(0.3)
        assert waiter.is_alive(), f"the wait ended on a trickle: {outcome}"
    waiter.join(3)
    assert outcome and isinstance(outcome[0], TimeoutError)
    assert body.failed


def test_what_was_read_ahead_with_the_head_is_read_without_waiting(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """Bytes gunicorn read past the head are there at once: no wait, and the read takes only
    what is there (it must not wait for the client while the caller holds a share)."""
    ours, theirs = tcp_pair
    environ, _, _ = _body(ours, 100_000, buffered=b"h" * 1000)
    direct = SocketBody.of(environ)
    assert direct is not None
    theirs.sendall(b"i" * 500)
    time.sleep(0.2)
    assert direct.wait_ready(64 * 1024) == 1500
    assert direct.read(1500) == b"h" * 1000 + b"i" * 500


def test_over_tls_it_cannot_tell(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = tcp_pair
    fake_tls = ssl.SSLSocket.__new__(ssl.SSLSocket)  # only its type is looked at
    unreader = SocketUnreader(ours)
    direct = SocketBody(Body(LengthReader(unreader, 10)), fake_tls, None)
    assert direct.wait_ready(10) is None
