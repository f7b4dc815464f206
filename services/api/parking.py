"""Idle keep-alive connections held without a greenlet.

Why: a greenlet waiting for its connection's next request costs ~9 KB (its saved C stack and
the interpreter's frame chunk), and gunicorn's parser and the head deadline around it a few
more: 5,000 idle connections took ~13 KB each of a worker's memory, so the 10,000 of
bench/load_bench.py (d), split unevenly between two workers, brought one near the 300 MB
bound. A connection that has been idle for ``PARK_AFTER`` seconds, with nothing buffered, is
handed to this process's :class:`ParkingLot` instead: its file descriptor with an io watcher
and a timer, about 1 KB. Its first byte spawns a greenlet that serves it again from a fresh
parser (nothing was buffered when it was parked, so nothing is lost); the keep-alive timeout,
counted from its last answer as before, closes it. A TLS connection is parked as its socket
object (OpenSSL's state cannot be detached from it), which saves the greenlet's share. A
connection that is busy keeps its greenlet: parking costs a few system calls, so it is for
connections idle long enough that they no longer cost anything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gevent
from gevent.socket import socket as _GeventSocket

# Seconds a keep-alive connection waits for its next request in its greenlet before it is parked.
PARK_AFTER = 1.0


def _kept_open() -> None:
    """A parked TLS socket's ``close`` while it is parked: gunicorn and gevent's server close the
    connection when its greenlet ends, and this one has not ended."""


def keep(sock: Any) -> Any:
    """Takes a connection out of its socket object's hands before gunicorn closes it: a plain
    socket's descriptor (the object is detached; its state is all in the kernel), or a TLS socket
    itself (its state is OpenSSL's too), whose ``close`` does nothing until the lot gives it back.
    What it returns is what :meth:`ParkingLot.park` takes."""
    if type(sock) is _GeventSocket:
        return sock.detach()
    sock.close = _kept_open  # an instance attribute, over the class's method
    return sock


def _given_back(kept: Any) -> Any:
    if isinstance(kept, int):
        return _GeventSocket(fileno=kept)
    kept.__dict__.pop("close", None)
    return kept


def release(kept: Any) -> None:
    """Closes a connection :func:`keep` took that is not parked after all."""
    if isinstance(kept, int):
        os.close(kept)
    else:
        _given_back(kept).close()


class _Parked:
    __slots__ = ("expiry", "kept", "readable", "resume", "served", "slot")

    def __init__(self, kept: Any, resume: Callable[[Any], None], slot: Any, served: bool) -> None:
        self.kept = kept
        self.resume = resume
        self.slot = slot
        self.readable: Any = None
        self.expiry: Any = None
        self.served = served


class ParkingLot:
    """The connections one worker process holds parked. ``closed`` is called for each one the
    keep-alive timeout (or :meth:`close_all`) closes, after it has left the lot."""

    def __init__(self, closed: Callable[[], None]) -> None:
        # By whether the connection has had a request answered (served) or not yet (fresh), each
        # in the order they were parked.
        self._served: dict[int, _Parked] = {}
        self._fresh: dict[int, _Parked] = {}
        self._closed = closed

    def __len__(self) -> int:
        return len(self._served) + len(self._fresh)

    def park(self, kept: Any, seconds: float, resume: Callable[[Any], None], slot: Any = None,
             served: bool = True) -> None:
        """Holds a connection (what :func:`keep` returned) until it is readable, then calls
        ``resume`` with a socket object for it, in the hub (``resume`` must not block); after
        ``seconds`` with nothing to read, closes it. ``slot``: a semaphore the caller acquired for
        the connection (its server's pool), released when it leaves the lot. ``served``: whether
        a request was answered on it (else it is parked before its first)."""
        fd = kept if isinstance(kept, int) else kept.fileno()
        loop = gevent.get_hub().loop
        entry = _Parked(kept, resume, slot, served)
        entry.readable = loop.io(fd, 1)
        entry.expiry = loop.timer(max(0.0, seconds))
        (self._served if served else self._fresh)[id(entry)] = entry
        # libev's io watchers are level-triggered: a byte that arrived before this line wakes it at once.
        entry.readable.start(self._wake, entry)
        entry.expiry.start(self._expire, entry)

    def _leave(self, entry: _Parked) -> None:
        del (self._served if entry.served else self._fresh)[id(entry)]
        for watcher in (entry.readable, entry.expiry):
            watcher.stop()
            watcher.close()
        if entry.slot is not None:
            entry.slot.release()

    def _wake(self, entry: _Parked) -> None:
        self._leave(entry)
        try:
            sock = _given_back(entry.kept)
        except OSError:
            self._close(entry)
            return
        entry.resume(sock)

    def _expire(self, entry: _Parked) -> None:
        self._leave(entry)
        self._close(entry)

    def _close(self, entry: _Parked) -> None:
        release(entry.kept)
        self._closed()

    def close_oldest(self) -> bool:
        """Closes the connection parked longest (its slot goes back to its server's pool), as
        nginx reuses idle keep-alive connections when it runs out: whether there was one. Its
        client sees a keep-alive connection closed while idle, which every HTTP client expects
        and answers by opening a new one. Connections that have had an answer go first: one
        parked before its first request may be a client that is only slow to send it (a load
        generator short of CPU was, 1 s after connecting), which would see its new connection
        closed with no answer; such connections go only when no other is left."""
        for parked in (self._served, self._fresh):
            for entry in parked.values():  # insertion order: the longest parked first
                self._expire(entry)
                return True
        return False

    def close_all(self) -> None:
        """Closes every parked connection (the worker is stopping: their clients reconnect to
        another, as after any keep-alive connection's end)."""
        for entry in [*self._served.values(), *self._fresh.values()]:
            self._expire(entry)
