"""gunicorn's own log lines written as every other gateway line: one JSON object per line.

gunicorn logs through a handler of its own, in plain text (``[date] [pid] [LEVEL] message``):
one stream in two formats breaks whatever parses it, and the lines that matter most to an
operator (a worker killed, an error in a worker) were the ones a JSON pipeline dropped. Here
its lines go to the handler services/common/logs.py sets up, with the process id as a field.

gunicorn also logs every request it cannot parse as a warning that quotes the client's bytes
(a request line of up to 8 KiB, a header name): a client sending garbage wrote warnings of its
own making, as fast as it could connect. The gateway's answer to such a request is written by
services/api/wire.py, which logs it once, as an access line with the fixed explanation the
client was given; gunicorn's quoting line is kept at debug level only.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

# How gunicorn's worker (workers/base.py, handle_error) starts the line it logs per request it
# could not parse.
_UNPARSED = "Invalid request from ip="


def _with_pid(record: logging.LogRecord) -> bool:
    record.fields = {"pid": record.process}
    return True


class GatewayLog(Logger):  # type: ignore[misc]
    """gunicorn's ``logger_class`` for the gateway (gunicorn instantiates it, in the master)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)  # gunicorn's level, access log and syslog settings, and its handler
        for handler in list(self.error_log.handlers):
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True  # to the root logger's JSON handler
        if _with_pid not in self.error_log.filters:
            self.error_log.addFilter(_with_pid)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith(_UNPARSED):
            self.error_log.debug(msg, *args, **kwargs)
            return
        self.error_log.warning(msg, *args, **kwargs)
