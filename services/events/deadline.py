"""A total deadline for one HTTP exchange made through urllib3 (the webhook sink's POST).

urllib3's ``Timeout`` bounds each socket operation, not the exchange: a receiver that sends its
status line one byte every two seconds never lets a read wait 3 s, so a 3 s ``timeout`` would
hold the endpoint's delivery loop for ever, with nothing retried or dead-lettered. Here a timer
shuts the exchange's socket down when the deadline passes: ``shutdown`` (unlike ``close``) is
safe while another thread is blocked on the socket, and makes the blocked read or write end at
once (end of stream, a broken pipe), so urllib3 raises and the sink reports an ordinary failure.

The pool's connections register themselves with the deadline of the send running in their thread
(a context variable): on ``connect`` (a new connection) and on ``request`` (a kept-alive one).
What this cannot interrupt is a name lookup inside ``connect``; a socket connect is bounded by
urllib3's connect timeout.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from types import TracebackType
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("wharf_events_deadline", default=None)


class Deadline:
    """``with Deadline(seconds) as limit:`` bounds every connection used in the block; afterwards
    ``limit.expired`` says whether it was cut (its answer, if any, is then incomplete)."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._expired = False
        self._over = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: contextvars.Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        self._token = _CURRENT.set(self)
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.cancel()
        with self._lock:
            self._over = True  # a late timer must not cut a connection the pool holds again
        if self._token is not None:
            _CURRENT.reset(self._token)

    @property
    def expired(self) -> bool:
        with self._lock:
            return self._expired

    def track(self, connection: HTTPConnection) -> None:
        """Bounds ``connection`` too; cut at once if the deadline passed already (it was still
        connecting when the timer fired)."""
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            cut = self._expired
        if cut:
            _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self._expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


def _shut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return
    with contextlib.suppress(OSError):  # closed already: nothing is blocked on it
        sock.shutdown(socket.SHUT_RDWR)


def _track(connection: HTTPConnection) -> None:
    limit = _CURRENT.get()
    if limit is not None:
        limit.track(connection)


class _BoundedConnection(HTTPConnection):
    """A connection that puts itself under the running send's deadline."""

    def connect(self) -> None:
        super().connect()
        _track(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _track(self)
        super().request(*args, **kwargs)


class _BoundedHTTPSConnection(_BoundedConnection, HTTPSConnection):
    """The same over TLS (the mixin's ``connect`` runs the TLS one: it comes first in the MRO)."""


class _BoundedPool(HTTPConnectionPool):
    ConnectionCls = _BoundedConnection


class _BoundedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


def pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A PoolManager whose connections honour ``Deadline`` (``kwargs``: PoolManager's)."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": _BoundedPool, "https": _BoundedHTTPSPool}
    return manager
