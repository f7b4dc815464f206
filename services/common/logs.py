"""One JSON line per event on stderr, so logs stay machine-readable; with tracing on, each
line written during a traced request names its trace (``trace_id``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time

from services.common import tracing


def _timestamp(seconds: float) -> str:
    """UTC, to the millisecond, as every log line carries it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        trace_id = tracing.current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    sys.unraisablehook = _unraisable


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    """An exception Python could not raise (one in a finalizer) as one JSON line, written without
    the logging module: Python's own hook printed a plain-text traceback. Under gevent a worker's
    exit finalizes its greenlets, and a finalizer that then asks for the current thread (the
    logging module's, gRPC's) gets "greenlet is being finalized": noise of the exit, left out."""
    if isinstance(info.exc_value, RuntimeError) and "greenlet is being finalized" in str(info.exc_value):
        return
    with contextlib.suppress(Exception):
        entry = {"ts": _timestamp(time.time()), "level": "warning", "logger": "wharf", "msg": "exception not raised",
                 "error": f"{info.exc_type.__name__}: {info.exc_value}"[:500],
                 "where": (info.err_msg or repr(info.object))[:300]}
        os.write(2, (json.dumps(entry, default=str) + "\n").encode())


class AccessLog:
    """The per-request line, written with one write(2) and no logging lock.

    Every request of every service goes through here, so it skips the logging
    module's record objects and handler lock (contended by dozens of threads);
    a single write of a line under PIPE_BUF is atomic, so lines never interleave.
    """

    def __init__(self, logger: str, fd: int = 2) -> None:
        self._logger = logger
        self._fd = fd
        self._enabled = logging.getLogger(logger).isEnabledFor(logging.INFO)

    def write(self, msg: str, fields: dict[str, object]) -> None:
        if not self._enabled:
            return
        entry = {"ts": _timestamp(time.time()), "level": "info", "logger": self._logger, "msg": msg, **fields}
        trace_id = tracing.current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        with contextlib.suppress(OSError):  # a closed stderr must not fail the request
            os.write(self._fd, (json.dumps(entry, default=str) + "\n").encode())
