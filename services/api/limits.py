"""A cap on the requests a gateway worker serves at once.

Past ``WHARF_MAX_REQUESTS_IN_FLIGHT`` a new request gets ``503`` with ``Retry-After``
straight away, so that an overload sheds the newest work instead of slowing every request
already being served. Idle keep-alive connections are not requests and are not counted
(``WHARF_WORKER_CONNECTIONS`` bounds those). A request counts until its response is
closed, so a long download holds its place while it streams.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_BUSY = json.dumps({"errors": [{"code": "TOOMANYREQUESTS",
                                "message": "the registry is serving as many requests as it can; retry shortly"}]}
                   ).encode()


def _then(close: Callable[[], None] | None, release: Callable[[], None]) -> Callable[[], None]:
    """``close`` (when there is one), then ``release``, whatever ``close`` raises."""
    def chained() -> None:
        try:
            if close is not None:
                close()
        finally:
            release()
    return chained


class _Released:
    """A response iterable that gives its place back when the server closes it."""

    def __init__(self, body: Iterable[bytes], release: Callable[[], None]) -> None:
        self._body = body
        self.close = _then(getattr(body, "close", None), release)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)


class InFlightLimit:
    """WSGI middleware; one per worker process (a gevent worker runs one thread, so the count
    needs no lock)."""

    def __init__(self, app: WSGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit
        self.in_flight = 0

    def _release_once(self) -> Callable[[], None]:
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight -= 1
        return release

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.in_flight >= self._limit:
            start_response("503 Service Unavailable", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(_BUSY))), ("Retry-After", "1"),
                ("Docker-Distribution-API-Version", "registry/2.0")])
            return [_BUSY]
        self.in_flight += 1
        release = self._release_once()
        try:
            body = self._app(environ, start_response)
        except BaseException:
            release()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(body, file_wrapper):
            # Keep the server's own file wrapper, which it sends with sendfile: chain its close.
            body.close = _then(body.close, release)  # type: ignore[method-assign]
            return body
        return _Released(body, release)
