"""The gateway's HTTP figures, recorded once per request by its worker (services/api/worker.py).

Recording must cost the hottest request (a cached manifest, answered in tens of microseconds)
almost nothing, so the families are tallies of plain numbers (services/common/metrics.py,
``Tally``) that become Prometheus families only when scraped: a request costs four dictionary
updates and a bisect. The gauges of what
is open now (transfers, connections; requests in flight are services/api/limits.py's count)
are plain integers that the registry reads when scraped (``set_function``), never updated
through it.

Labels stay bounded whatever clients send: the route is an endpoint name from the route table
(or ``none``), the method one of the HTTP methods the API uses (or ``other``).
"""

from __future__ import annotations

import functools
from typing import Any, BinaryIO

from services.common import metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NO_ROUTE = "none"
# Where the WSGI environ carries what the application learnt about a request for the worker.
ROUTE_KEY = "wharf.route"
TRANSFER_KEY = "wharf.transfer"
INPUT_KEY = "wharf.input"


class CountingInput:
    """A request body stream that counts what was read from it (everything else passes through,
    so gunicorn's reader underneath stays reachable: services/api/wire.py)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.inner = stream
        self.received = 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.received += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.inner.readline(size)
        self.received += len(data)
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class HttpMetrics:
    """One per worker process (gevent: one thread, so the integers need no lock)."""

    def __init__(self) -> None:
        self.connections = 0
        self.transfers = {"upload": 0, "download": 0}
        metrics.HTTP_CONNECTIONS.set_function(lambda: self.connections)
        for direction in self.transfers:
            metrics.HTTP_TRANSFERS.labels(direction).set_function(functools.partial(self.transfers.__getitem__,
                                                                                    direction))

    def record(self, route: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        if method not in METHODS:
            method = "other"  # a client's invented methods must not grow the figures
        metrics.HTTP_REQUESTS.inc((route, method, status))
        metrics.HTTP_DURATION.observe((route, method), seconds)
        if received:
            metrics.HTTP_RECEIVED.inc((route,), received)
        if sent:
            metrics.HTTP_SENT.inc((route,), sent)

    def begin_transfer(self, environ: dict[str, Any], direction: str) -> None:
        """A blob transfer starts (the worker ends it when the request ends: :meth:`end`)."""
        self.transfers[direction] += 1
        environ[TRANSFER_KEY] = direction

    def count_input(self, environ: dict[str, Any]) -> None:
        """Counts the bytes the application reads of this request's body."""
        counted = environ[INPUT_KEY] = CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counted

    def end(self, environ: dict[str, Any], method: str, status: int, seconds: float, sent: int) -> None:
        """Records a request the application answered (the worker calls it once it is sent)."""
        direction = environ.get(TRANSFER_KEY)
        if direction is not None:
            self.transfers[direction] -= 1
        counted = environ.get(INPUT_KEY)
        self.record(environ.get(ROUTE_KEY, NO_ROUTE), method, status, seconds,
                    counted.received if counted is not None else 0, sent)
