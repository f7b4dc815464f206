"""A strict, narrow reader of request heads for the hot-read path, in front of gunicorn's parser.

Why: with the framework already out of the way for read-cache hits (hot_reads.py), gunicorn's
request parsing was 40% of a blob HEAD's cost in the gateway (profiled with py-spy: the
request-line and header grammar in Python, the forwarded-allow-ips check with ``ipaddress``
per request, the header policy). A registry's hottest requests are the simplest ones on the
wire: a GET or HEAD with a handful of headers and no body.

This reader takes only those, and only when every byte of the head is unremarkable: the
request line is ``GET`` or ``HEAD``, a target of visible ASCII starting with a single ``/``
with no ``%`` or ``#``, and ``HTTP/1.0`` or ``HTTP/1.1``; each header line is a token without
``_`` (gunicorn drops or refuses those), a colon and a value of printable ASCII, no repeated
name, no more of them and no longer lines than gunicorn's own limits allow (and at most
``MAX_FIELDS``); no ``Content-Length``, ``Transfer-Encoding``, ``Expect``, ``Upgrade`` or
``HTTP2-Settings``, at most one of the secure-scheme headers gunicorn checks against each
other, and a ``Connection`` that is exactly ``close`` or ``keep-alive`` if present. Anything
else — a bare LF, an obsolete folded line, a longer head, a body, a byte outside those sets, a
proxy-protocol listener — is handed to gunicorn's parser untouched (the bytes are put back
into its reader), which answers as it always has. So this
reader can only ever accept a subset of what gunicorn accepts, and reads each accepted head
exactly as gunicorn would: there is no request it frames differently (no smuggling), and no
request it refuses that gunicorn would serve.

An accepted head becomes a :class:`QuickRequest`. The worker answers it from the read cache;
on a miss it turns it back into gunicorn's own request object from the same bytes
(:meth:`QuickParser.full_request`), and the application serves it as before.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from gunicorn.http.parser import RequestParser

# The largest head taken here; a longer one is gunicorn's (which has its own, configurable limits).
MAX_HEAD = 8192
# The most of a request body the application left unread that is read and discarded to keep
# the connection; beyond it the connection closes (and the answer says so: worker.py).
DRAIN_LIMIT = 64 * 1024
MAX_FIELDS = 64
_GUNICORN_LINE_CAP = 8190  # gunicorn's largest request line and default largest header line
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/(?!/)[!-~]*) HTTP/1\.([01])")
# What an unfinished request line may hold (its version checked once the line ends).
_REQUEST_LINE_SO_FAR = re.compile(rb"[!-~]+( [!-~]*( [!-~]*)?)?")
# RFC 9110 token, without "_" (see above); values: printable ASCII, spaces and tabs.
_NAME = re.compile(rb"[!#$&'*+\-.^`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t -~]*")
_REFUSED = frozenset((b"CONTENT-LENGTH", b"TRANSFER-ENCODING", b"EXPECT", b"UPGRADE", b"HTTP2-SETTINGS"))


class _NoBody:
    """The body of a request without one (gunicorn's loop drains the previous request's body)."""

    failed = False

    @staticmethod
    def read(size: int | None = None) -> bytes:
        return b""


_NO_BODY = _NoBody()


class Limits:
    """gunicorn's head limits from its config (each config read is a lookup through gunicorn's
    settings)."""

    __slots__ = ("buffer_ok", "field_size", "fields", "line", "scheme_headers")

    def __init__(self, cfg: Any) -> None:
        line = int(cfg.limit_request_line)  # gunicorn: 0 is no limit, below 0 or above its cap is the cap
        self.line = line if 0 <= line < _GUNICORN_LINE_CAP else _GUNICORN_LINE_CAP
        fields = int(cfg.limit_request_fields)
        self.fields = min(fields, MAX_FIELDS) if fields > 0 else MAX_FIELDS
        size = int(cfg.limit_request_field_size)
        self.field_size = size if size > 0 else _GUNICORN_LINE_CAP
        # gunicorn also refuses a head once more than fields * (size + 2) + 4 bytes are buffered
        # behind its request line, which depends on how the bytes arrived. This reader holds at
        # most MAX_HEAD plus one read (of at most gunicorn's 8 KiB): with limits that small it
        # stands aside rather than accept what gunicorn might have refused.
        self.buffer_ok = (fields if fields > 0 else 32768) * (self.field_size + 2) + 4 > 4 * MAX_HEAD
        self.scheme_headers = frozenset(name.upper().encode() for name in (cfg.secure_scheme_headers or {}))


@functools.lru_cache(maxsize=8)
def _limits_of(cfg: Any) -> Limits:
    """A worker's one config's limits, read once (a parser is made per connection)."""
    return Limits(cfg)


class QuickRequest:
    """What gunicorn's keep-alive loop and the worker read of a request, for an accepted head."""

    __slots__ = (
        "_close",
        "body",
        "environ",
        "fragment",
        "headers",
        "method",
        "parser",
        "path",
        "proxy_protocol_info",
        "query",
        "raw",
        "uri",
        "version",
        "wharf_started",
    )

    def __init__(self, method: str, uri: str, version: tuple[int, int], headers: list[tuple[str, str]],
                 environ: dict[str, Any], close: bool, raw: bytes, parser: QuickParser) -> None:
        self.method, self.uri, self.version, self.headers = method, uri, version, headers
        self.path, _, self.query = uri.partition("?")
        self.fragment = ""
        self.environ, self._close, self.raw, self.parser = environ, close, raw, parser
        self.body = _NO_BODY
        self.proxy_protocol_info = None
        self.wharf_started = 0.0

    def should_close(self) -> bool:
        return self._close


def parse_head(head: bytes, remote_addr: str, limits: Limits) -> tuple[str, str, tuple[int, int],
                                                                      list[tuple[str, str]], dict[str, Any],
                                                                      bool] | None:
    """An accepted head's method, target, version, headers (names upper-cased, as gunicorn
    gives them), the environ the hot-read path reads, and whether the connection closes after
    it; None for anything this reader does not take."""
    lines = head.split(b"\r\n")
    found = _REQUEST_LINE.fullmatch(lines[0])
    if found is None or len(lines) > limits.fields + 1 or len(lines[0]) > limits.line > 0:
        return None
    method, target = found.group(1).decode(), found.group(2)
    if b"%" in target or b"#" in target:
        return None
    uri = target.decode()
    version = (1, int(found.group(3)))
    path = uri.partition("?")[0]
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "RAW_URI": uri,
                               "REMOTE_ADDR": remote_addr}
    headers: list[tuple[str, str]] = []
    close = version < (1, 1)
    schemes = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _NAME.fullmatch(name) is None or _VALUE.fullmatch(value) is None \
                or len(line) + 2 > limits.field_size > 0:
            return None
        upper = name.upper()
        if upper in _REFUSED:
            return None
        if upper in limits.scheme_headers:
            schemes += 1
            if schemes > 1:
                return None  # gunicorn refuses those that disagree
        text_name = upper.decode()
        text = value.strip(b" \t").decode()
        key = "CONTENT_TYPE" if upper == b"CONTENT-TYPE" else "HTTP_" + text_name.replace("-", "_")
        if key in environ:
            return None  # a repeated field: gunicorn's reading of it is the one that counts
        if upper == b"CONNECTION":
            said = text.lower()
            if said == "close":
                close = True
            elif said == "keep-alive":
                close = False
            else:
                return None
        environ[key] = text
        headers.append((text_name, text))
    return method, uri, version, headers, environ, close


def _may_become_quick(data: bytes, limits: Limits) -> bool:
    """Whether an unfinished head may still be one this reader takes. Only such a head is waited
    on here: any other goes to gunicorn's parser at once, so that a bad request line is refused
    as soon as gunicorn would refuse it, not once the head ends or the header timeout does."""
    line_end = data.find(b"\r\n")
    if line_end >= 0:
        return _REQUEST_LINE.fullmatch(data, 0, line_end) is not None and not line_end > limits.line > 0
    line = data[:-1] if data.endswith(b"\r") else data
    if len(line) > limits.line > 0 or _REQUEST_LINE_SO_FAR.fullmatch(line) is None:
        return False
    return line.startswith((b"GET /", b"HEAD /")) or b"GET /".startswith(line) or b"HEAD /".startswith(line)


class QuickParser(RequestParser):  # type: ignore[misc]
    """gunicorn's request parser, taking the heads described above itself (when ``quick``)."""

    mesg: Any

    def __init__(self, cfg: Any, source: Any, source_addr: Any, quick: bool = True) -> None:
        super().__init__(cfg, source, source_addr)
        quick = quick and getattr(cfg, "proxy_protocol", "off") in ("off", False, None)
        self._remote = source_addr[0] if isinstance(source_addr, tuple) else ""
        limits = _limits_of(cfg) if quick else None
        self._limits = limits if limits is not None and limits.buffer_ok else None

    def finish_body(self, deadline: float | None = None, max_bytes: int | None = None) -> bool:
        """Discards what the application left of the last request's body, up to ``DRAIN_LIMIT``
        bytes; False (the connection closes) when more is left. gunicorn drains without a cap,
        1 KiB a read: a ``PATCH`` refused at once (413 for its declared length, 401, 404) then
        had its worker read whatever the client sent for as long as it sent it, one core's
        worth (19 MB/s, 19 CPU-seconds in 20 s)."""
        # gunicorn gives up on reaching its cap, so a leftover of exactly DRAIN_LIMIT needs one more;
        # a caller's own, smaller cap is passed on as it is.
        cap = DRAIN_LIMIT + 1 if max_bytes is None else min(max_bytes, DRAIN_LIMIT + 1)
        return bool(super().finish_body(deadline, cap))

    def __next__(self) -> Any:
        limits = self._limits
        if limits is None:
            return super().__next__()
        if self.mesg and self.mesg.should_close():
            raise StopIteration()
        if not self.finish_body():
            raise StopIteration()
        request = self._read_quick(limits)
        if request is None:
            return super().__next__()
        self.req_count += 1
        self.mesg = request
        return request

    next = __next__

    def _read_quick(self, limits: Limits) -> QuickRequest | None:
        """The next request when this reader takes its head; otherwise every byte read is put
        back, for gunicorn's parser to read as if nothing had happened."""
        data = self.unreader.read()
        if not data:
            return None  # end of the connection: gunicorn's parser says so its own way
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(data) > MAX_HEAD or data.count(b"\n") != data.count(b"\r\n") \
                    or not _may_become_quick(data, limits):
                self.unreader.unread(data)
                return None
            more = self.unreader.read()
            if not more:
                self.unreader.unread(data)
                return None
            data += more
        head, rest = data[:end], data[end + 4:]
        parsed = parse_head(head, self._remote, limits) if end <= MAX_HEAD else None
        if parsed is None:
            self.unreader.unread(data)
            return None
        if rest:
            self.unreader.unread(rest)
        return QuickRequest(*parsed, raw=data[:end + 4], parser=self)

    def full_request(self, quick: QuickRequest) -> Any:
        """gunicorn's own request for a head this reader took, read from the same bytes."""
        self.unreader.unread(quick.raw)
        self.mesg = self.mesg_class(self.cfg, self.unreader, self.source_addr, self.req_count)
        return self.mesg
