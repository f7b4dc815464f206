"""gunicorn's log lines leave the gateway as JSON, and a request it could not parse is not a warning."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from gunicorn.config import Config

from services.api.server_log import GatewayLog
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
