"""gunicorn's log lines leave the gateway as JSON, and a request it could not parse is not a warning."""

from __future__ import annotations

import io
import json
import logging
import sys
import types
from collections.abc import Iterator

import pytest
from gunicorn.config import Config

from services.api.server_log import GatewayLog
from services.common import logs
from services.common.logs import JsonFormatter


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    root.handlers[:] = [handler]
    try:
        yield out
    finally:
        root.handlers[:], level = kept
        root.setLevel(level)


def _logger(level: str) -> GatewayLog:
    config = Config()
    config.set("loglevel", level)
    return GatewayLog(config)


def test_gunicorns_lines_are_json_with_the_process_id(lines: io.StringIO) -> None:
    log = _logger("info")
    log.info("Booting worker with pid: %s", 42)
    log.warning("Worker with pid %s was terminated due to signal %s", 42, 9)
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [(e["level"], e["logger"], e["msg"]) for e in entries] == [
        ("info", "gunicorn.error", "Booting worker with pid: 42"),
        ("warning", "gunicorn.error", "Worker with pid 42 was terminated due to signal 9")]
    assert all(isinstance(e["pid"], int) for e in entries)
    assert not log.error_log.handlers  # gunicorn's plain-text handler is gone, however often setup runs
    log.setup(log.cfg)
    assert not log.error_log.handlers and log.error_log.filters.count(log.error_log.filters[0]) == 1


def test_a_request_gunicorn_could_not_parse_is_logged_at_debug_only(lines: io.StringIO) -> None:
    quoted = "Invalid request from ip=127.0.0.1: Invalid HTTP method: 'AAAA\\x1b[31m'"
    _logger("warning").warning(quoted)
    assert lines.getvalue() == ""
    _logger("debug").warning(quoted)
    assert json.loads(lines.getvalue())["level"] == "debug"



def test_an_exception_python_cannot_raise_is_one_json_line(capfd: pytest.CaptureFixture[str]) -> None:
    """A finalizer's exception, as Python's default hook would print it in plain text; gevent's
    "greenlet is being finalized" at a worker's exit is left out."""
    hook, root = sys.unraisablehook, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("info")

        class Finalized:
            def __del__(self) -> None:
                raise ValueError("boom")

        Finalized()
        [line] = [json.loads(text) for text in capfd.readouterr().err.splitlines() if text]
        assert line["level"] == "warning" and line["error"] == "ValueError: boom"
        sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, object=None, err_msg=None, exc_traceback=None,
                                                 exc_value=RuntimeError("greenlet is being finalized")))
        assert capfd.readouterr().err == ""
    finally:
        sys.unraisablehook = hook
        root.handlers[:], root.level = handlers, level
