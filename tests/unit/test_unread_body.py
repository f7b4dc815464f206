"""What the gateway does with a request body the application left unread (services/api/worker.py
``body_left_over``, quick_heads.QuickParser.finish_body): up to DRAIN_LIMIT is read past and the
connection kept; beyond it the answer says ``Connection: close`` and the parser stops. Run on
gunicorn's own parser and readers over a socket pair (the real stack: test_slow_clients.py)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from gunicorn.config import Config

from services.api.quick_heads import DRAIN_LIMIT, QuickParser
from services.api.worker import CoalescedResponse, body_left_over


def _parse(pair: tuple[socket.socket, socket.socket], head: bytes, body: bytes) -> tuple[QuickParser, Any]:
    ours, theirs = pair
    data = b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body
    # In the background: a body larger than the socket pair's buffer waits for its reader.
    threading.Thread(target=lambda: theirs.sendall(data), daemon=True).start()
    parser = QuickParser(Config(), ours, ("127.0.0.1", 1))
    return parser, next(parser)


def test_a_declared_length_beyond_the_limit_closes(pair: tuple[socket.socket, socket.socket]) -> None:
    _, request = _parse(pair, b"Content-Length: %d\r\n" % (DRAIN_LIMIT + 1), b"")
    assert body_left_over(request)
    response = CoalescedResponse(request, pair[0], Config())
    response.start_response("400 Bad Request", [("Content-Length", "0")])
    assert response.should_close()
    assert "Connection: close\r\n" in response.default_headers()


def test_a_small_leftover_is_read_past_and_the_next_request_served(pair: tuple[socket.socket, socket.socket]) -> None:
    body = b"x" * DRAIN_LIMIT
    # The next request follows in the same send: a second writer could interleave with the first.
    parser, request = _parse(pair, b"Content-Length: %d\r\n" % len(body),
                             body + b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not body_left_over(request)
    response = CoalescedResponse(request, pair[0], Config())
    response.start_response("400 Bad Request", [("Content-Length", "0")])
    assert not response.should_close()
    assert next(parser).path == "/v2/"


def test_the_parser_stops_rather_than_read_a_large_leftover(pair: tuple[socket.socket, socket.socket]) -> None:
    body = b"x" * (4 * DRAIN_LIMIT)
    parser, request = _parse(pair, b"Content-Length: %d\r\n" % len(body), body)
    assert request.body.read(10) == b"x" * 10
    with pytest.raises(StopIteration):
        next(parser)


def test_a_chunked_body_not_read_to_its_end_closes(pair: tuple[socket.socket, socket.socket]) -> None:
    _, request = _parse(pair, b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")
    assert body_left_over(request)
    while request.body.read(1024):
        pass
    assert not body_left_over(request)


def test_a_request_without_a_body_keeps_its_connection(pair: tuple[socket.socket, socket.socket]) -> None:
    _, request = _parse(pair, b"", b"")
    assert not body_left_over(request)
