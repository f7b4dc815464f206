"""The blob store's append keeps one write in flight while it receives the next message
(services/blobstore/server.py, ``_append``): writes stay in order, one at a time, and a stream
that fails while a write is still running is aborted only once that write has returned (closing
the writer under it would race the write)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.blobstore.server import BlobStoreServicer


class _Session:
    def __init__(self, hold: bytes) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.hold = hold
        self.release = threading.Event()
        self.running = threading.Event()
        self._lock = threading.Lock()
        self._writing = False

    def write(self, data: bytes) -> None:
        with self._lock:
            assert not self._writing, "two writes at once"
            self._writing = True
        self.events.append(("write", data))
        if data == self.hold:
            self.running.set()
            assert self.release.wait(5)
        self.events.append(("written", data))
        with self._lock:
            self._writing = False

    def abort(self, exc: BaseException) -> None:
        self.events.append(("abort", type(exc).__name__.encode()))

    def finish(self) -> Any:
        self.events.append(("finish", b""))
        return types.SimpleNamespace(upload_id="u")


def _servicer(session: _Session, pool: concurrent.futures.ThreadPoolExecutor) -> BlobStoreServicer:
    blobs = types.SimpleNamespace(open_append=lambda upload_id, repository, offset: session)
    return BlobStoreServicer(blobs, 1024, pool, fills=None)  # type: ignore[arg-type]


def _message(data: bytes) -> Any:
    return types.SimpleNamespace(data=data)


def test_writes_stay_in_order_and_one_at_a_time() -> None:
    session = _Session(hold=b"")
    pieces = [bytes([n]) * 10 for n in range(1, 30)]

    async def rest() -> AsyncIterator[Any]:
        for piece in pieces[1:]:
            await asyncio.sleep(0)
            yield _message(piece)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        asyncio.run(_servicer(session, pool)._append("u", "r", 0, _message(pieces[0]), rest()))
    assert [data for kind, data in session.events if kind == "written"] == pieces
    assert session.events[-1] == ("finish", b"")


def test_a_stream_that_fails_mid_write_is_aborted_after_the_write_returns() -> None:
    session = _Session(hold=b"second")

    async def rest() -> AsyncIterator[Any]:
        yield _message(b"second")
        # The client goes away while "second" is still being written.
        await asyncio.get_running_loop().run_in_executor(None, session.running.wait, 5)
        threading.Timer(0.2, session.release.set).start()
        raise ConnectionResetError("client went away")
        yield  # pragma: no cover

    with concurrent.futures.ThreadPoolExecutor(4) as pool, pytest.raises(ConnectionResetError):
        asyncio.run(_servicer(session, pool)._append("u", "r", 0, _message(b"first"), rest()))
    assert session.events == [("write", b"first"), ("written", b"first"), ("write", b"second"),
                              ("written", b"second"), ("abort", b"ConnectionResetError")]
