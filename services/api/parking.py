"""Idle keep-alive connections held without a greenlet.

Why: a greenlet waiting for its connection's next request costs ~9 KB (its saved C stack and
the interpreter's frame chunk), and gunicorn's parser and the head deadline around it a few
more: 5,000 idle connections took ~13 KB each of a worker's memory, so the 10,000 of
bench/load_bench.py (d), split unevenly between two workers, brought one near the 300 MB
bound. A connection that has been idle for ``PARK_AFTER`` seconds, with nothing buffered, is
handed to this process's :class:`ParkingLot` instead: its file descriptor with an io watcher
and a timer, about 1 KB. Its first byte spawns a greenlet that serves it again from a fresh
parser (nothing was buffered when it was parked, so nothing is lost); the keep-alive timeout,
counted from its last answer as before, closes it. A connection that is busy keeps its
greenlet: parking costs a few system calls, so it is for connections idle long enough that
they no longer cost anything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gevent
from gevent.socket import socket as _GeventSocket

# Seconds a keep-alive connection waits for its next request in its greenlet before it is parked.
PARK_AFTER = 1.0


class _Parked:
    __slots__ = ("expiry", "fd", "readable", "resume")

    def __init__(self, fd: int, resume: Callable[[Any], None]) -> None:
        self.fd = fd
        self.resume = resume
        self.readable: Any = None
        self.expiry: Any = None


class ParkingLot:
    """The connections one worker process holds parked. ``closed`` is called for each one the
    keep-alive timeout (or :meth:`close_all`) closes, after it has left the lot."""

    def __init__(self, closed: Callable[[], None]) -> None:
        self._parked: dict[int, _Parked] = {}
        self._closed = closed

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, fd: int, seconds: float, resume: Callable[[Any], None]) -> None:
        """Holds the connection ``fd`` (detached from its socket object) until it is readable, then
        calls ``resume`` with a new socket object for it, in the hub: ``resume`` must not block;
        after ``seconds`` with nothing to read, closes it."""
        loop = gevent.get_hub().loop
        entry = _Parked(fd, resume)
        entry.readable = loop.io(fd, 1)
        entry.expiry = loop.timer(max(0.0, seconds))
        self._parked[fd] = entry
        # libev's io watchers are level-triggered: a byte that arrived before this line wakes it at once.
        entry.readable.start(self._wake, entry)
        entry.expiry.start(self._expire, entry)

    def _leave(self, entry: _Parked) -> None:
        del self._parked[entry.fd]
        for watcher in (entry.readable, entry.expiry):
            watcher.stop()
            watcher.close()

    def _wake(self, entry: _Parked) -> None:
        self._leave(entry)
        try:
            sock = _GeventSocket(fileno=entry.fd)
        except OSError:
            os.close(entry.fd)
            self._closed()
            return
        entry.resume(sock)

    def _expire(self, entry: _Parked) -> None:
        self._leave(entry)
        os.close(entry.fd)
        self._closed()

    def close_all(self) -> None:
        """Closes every parked connection (the worker is stopping: their clients reconnect to
        another, as after any keep-alive connection's end)."""
        for entry in list(self._parked.values()):
            self._expire(entry)
