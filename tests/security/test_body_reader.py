"""The gateway's request-body reader ends promptly however the client's body fails (services/api/http.py)."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from services.api.request_input import READ_AHEAD, BodyPieces


class _FailsAfter(io.RawIOBase):
    """A body that yields ``pieces`` chunks, then fails as a dropped connection does."""

    def __init__(self, pieces: int) -> None:
        self._left = pieces

    def read(self, size: int = -1) -> bytes:
        if self._left == 0:
            raise ConnectionResetError("client went away")
        self._left -= 1
        return b"x" * 16


def test_a_failure_behind_a_full_queue_still_reaches_the_consumer() -> None:
    """The reader fills the queue, then fails: the error used to be dropped when it could not be
    queued, and the consumer waited for the transfer deadline (an hour)."""
    body = BodyPieces(_FailsAfter(READ_AHEAD), None)  # type: ignore[arg-type]
    time.sleep(1.0)  # the queue is full and the reader has failed
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        for _ in body:
            pass
    assert time.monotonic() - started < 3
    body.close()


def test_close_does_not_wait_for_a_silent_client() -> None:
    """A request that ends early (the blob store refused the append) while the client sends
    nothing: close() shuts the socket's read side instead of joining the reader forever."""
    server, client = socket.socketpair()
    try:
        body = BodyPieces(server.makefile("rb"), 1 << 20, server)
        started = time.monotonic()
        done = threading.Event()
        threading.Thread(target=lambda: (body.close(), done.set()), daemon=True).start()
        assert done.wait(5), "close() hung on a silent client"
        assert time.monotonic() - started < 5
    finally:
        server.close()
        client.close()
