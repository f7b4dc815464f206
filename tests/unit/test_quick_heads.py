"""The gateway's strict reader of request heads (services/api/quick_heads.py), against gunicorn's own parser.

The reader's promise: it takes only GET and HEAD heads made of unremarkable bytes, reads each of
them exactly as gunicorn's parser would, and hands everything else to that parser byte for byte.
So every test here runs the same bytes through plain ``gunicorn.http.parser.RequestParser`` and
through ``QuickParser`` and compares what comes out: the requests (method, target, version,
headers, whether the connection closes, the body), in order, and the error gunicorn ends with.
"""

from __future__ import annotations

import socket
import threading
import types
from typing import Any

import gevent
import gevent.socket
import pytest
from greenlet import getcurrent
from gunicorn.config import Config
from gunicorn.http import errors
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.ggevent import GeventWorker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.api import worker as worker_module
from services.api.http_metrics import HttpMetrics
from services.api.quick_heads import MAX_FIELDS, MAX_HEAD, Limits, QuickParser, QuickRequest, parse_head
from services.api.worker import GatewayWorker, _environ_of, _quick_parser_seen_by_deadline, _send

ADDR = ("127.0.0.1", 41234)
MANIFEST = b"/v2/library/alpine/manifests/latest"
BLOB = b"/v2/library/alpine/blobs/sha256:" + b"ab" * 32


def make_cfg(**overrides: Any) -> Config:
    """gunicorn's own configuration object (what the worker's parser gets), with some settings changed."""
    cfg = Config()
    for name, value in overrides.items():
        cfg.set(name, value)
    return cfg


CFG = make_cfg()


def fields(req: Any) -> tuple[Any, ...]:
    """What gunicorn's loop and the worker read of a request."""
    return (req.method, req.uri, req.path, req.query, req.fragment, req.version, list(req.headers),
            req.should_close())


def as_wsgi_names(environ: dict[str, Any]) -> dict[str, Any]:
    """The quick environ with Content-Type under its WSGI name, as ``_environ_of`` (and gunicorn) call it."""
    renamed = dict(environ)
    if "HTTP_CONTENT_TYPE" in renamed:
        renamed["CONTENT_TYPE"] = renamed.pop("HTTP_CONTENT_TYPE")
    return renamed


def trace(parser_class: type[RequestParser], source: Any, cfg: Config = CFG, convert: str = "all",
          addr: Any = ADDR) -> list[tuple[Any, ...]]:
    """Every request a parser yields from ``source`` (fields and body), and the error it ends with.

    QuickRequests are turned into gunicorn's request with ``full_request`` (``convert``: "all",
    "none" as for a hit, or "alternate"); each time, the QuickRequest's own fields must be the
    converted request's, and its environ what the hot-read path was given before it existed.
    """
    parser = parser_class(cfg, source, addr)
    seen: list[tuple[Any, ...]] = []
    try:
        for index, req in enumerate(parser):
            if type(req) is QuickRequest:
                own, environ = fields(req), dict(req.environ)
                assert req.body.read() == b"" and req.fragment == "" and req.proxy_protocol_info is None
                if convert == "all" or (convert == "alternate" and index % 2 == 0):
                    full = parser.full_request(req)
                    assert type(full) is Request and parser.mesg is full
                    assert fields(full) == own
                    assert as_wsgi_names(environ) == _environ_of(full, addr)
                    req = full
            else:
                assert type(req) is Request
            seen.append(("request", *fields(req), req.body.read()))
    except Exception as exc:
        seen.append(("error", type(exc), str(exc)))
    return seen


def quick_count(source: Any, cfg: Config = CFG) -> int:
    """How many requests QuickParser takes itself (without converting them)."""
    parser = QuickParser(cfg, source, ADDR)
    taken = 0
    try:
        for req in parser:
            taken += type(req) is QuickRequest
            req.body.read()
    except Exception:
        pass
    return taken


def first(parser_class: type[RequestParser], data: bytes, cfg: Config = CFG) -> Any:
    """The first request a parser yields from ``data``, or the exception it raises."""
    try:
        return next(parser_class(cfg, iter([data]), ADDR))
    except Exception as exc:
        return exc


def head_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def request(method: bytes = b"GET", target: bytes = MANIFEST, version: bytes = b"HTTP/1.1",
            *headers: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join([method + b" " + target + b" " + version, *headers]) + b"\r\n\r\n" + body


def sized_head(total: int) -> bytes:
    """A GET head (without its blank line) of exactly ``total`` bytes, in 60 fields of ordinary size."""
    line = b"GET " + MANIFEST + b" HTTP/1.1"
    names = [b"X-Pad-%02d: " % i for i in range(60)]
    fixed = len(line) + sum(2 + len(name) for name in names)
    each, extra = divmod(total - fixed, 60)
    values = [b"v" * (each + (1 if i < extra else 0)) for i in range(60)]
    head = line + b"".join(b"\r\n" + name + value for name, value in zip(names, values, strict=True))
    assert len(head) == total
    return head


def per_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# -- the configuration the tests use ------------------------------------------------------------


def test_gunicorns_config_object_has_the_limits_the_worker_sees() -> None:
    assert (CFG.limit_request_line, CFG.limit_request_fields, CFG.limit_request_field_size) == (4094, 100, 8190)
    assert CFG.secure_scheme_headers == {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https",
                                         "X-FORWARDED-SSL": "on"}
    assert CFG.proxy_protocol == "off" and CFG.header_map == "drop"
    assert "127.0.0.1" in CFG.forwarded_allow_ips  # ADDR is a trusted proxy: scheme headers are checked


@pytest.mark.parametrize("line,fields_,size,expected", [
    (4094, 100, 8190, (4094, MAX_FIELDS, 8190)),
    (0, 0, 0, (0, MAX_FIELDS, 8190)),  # gunicorn: 0 is no limit (line), its defaults (fields, size)
    (-1, -5, -1, (8190, MAX_FIELDS, 8190)),
    (9000, 10, 100, (8190, 10, 100)),  # gunicorn caps the request line at 8190
    (8190, 64, 8190, (8190, 64, 8190)),
])
def test_limits_follow_gunicorns_reading_of_its_settings(line: int, fields_: int, size: int,
                                                         expected: tuple[int, int, int]) -> None:
    cfg = types.SimpleNamespace(limit_request_line=line, limit_request_fields=fields_, limit_request_field_size=size,
                                secure_scheme_headers={"X-Forwarded-Proto": "https"}, proxy_protocol="off")
    limits = Limits(cfg)
    assert (limits.line, limits.fields, limits.field_size) == expected
    assert limits.scheme_headers == frozenset({b"X-FORWARDED-PROTO"})
    assert Limits(types.SimpleNamespace(**{**vars(cfg), "secure_scheme_headers": None})).scheme_headers == frozenset()


# -- heads the reader takes ---------------------------------------------------------------------


LIMITS = Limits(CFG)


def test_a_simple_get_head() -> None:
    parsed = parse_head(b"GET /v2/ HTTP/1.1\r\nHost: registry", "10.0.0.1", LIMITS)
    assert parsed == ("GET", "/v2/", (1, 1), [("HOST", "registry")],
                      {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/", "RAW_URI": "/v2/", "REMOTE_ADDR": "10.0.0.1",
                       "HTTP_HOST": "registry"}, False)


def test_a_head_with_a_query_upper_cases_names_and_strips_values() -> None:
    parsed = parse_head(b"HEAD /v2/a/blobs/x?n=1&last=b HTTP/1.1\r\naccept-encoding:  gzip \t\r\n"
                        b"X-Request-Id:\ttrace-1\r\nX-Empty:", "", LIMITS)
    assert parsed is not None
    method, uri, version, headers, environ, close = parsed
    assert (method, uri, version, close) == ("HEAD", "/v2/a/blobs/x?n=1&last=b", (1, 1), False)
    assert headers == [("ACCEPT-ENCODING", "gzip"), ("X-REQUEST-ID", "trace-1"), ("X-EMPTY", "")]
    assert environ == {"REQUEST_METHOD": "HEAD", "PATH_INFO": "/v2/a/blobs/x", "RAW_URI": "/v2/a/blobs/x?n=1&last=b",
                       "REMOTE_ADDR": "", "HTTP_ACCEPT_ENCODING": "gzip", "HTTP_X_REQUEST_ID": "trace-1",
                       "HTTP_X_EMPTY": ""}


@pytest.mark.parametrize("version,connection,close", [
    (b"HTTP/1.1", None, False),
    (b"HTTP/1.1", b"close", True),
    (b"HTTP/1.1", b" Close ", True),
    (b"HTTP/1.1", b"keep-alive", False),
    (b"HTTP/1.0", None, True),
    (b"HTTP/1.0", b"Keep-Alive", False),
    (b"HTTP/1.0", b"close", True),
])
def test_keep_alive_and_close_as_gunicorns_should_close(version: bytes, connection: bytes | None,
                                                        close: bool) -> None:
    headers = [b"Host: x"] + ([b"Connection:" + connection] if connection is not None else [])
    data = request(b"GET", MANIFEST, version, *headers)
    parsed = parse_head(head_of(data), "", LIMITS)
    assert parsed is not None and parsed[5] is close
    quick, gunicorn = first(QuickParser, data), first(RequestParser, data)
    assert type(quick) is QuickRequest and type(gunicorn) is Request
    assert quick.should_close() is gunicorn.should_close() is close
    assert quick.version == gunicorn.version


ACCEPTED = {
    "get": request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: registry"),
    "head": request(b"HEAD", BLOB, b"HTTP/1.1", b"Host: registry", b"Authorization: Bearer abc.def.ghi"),
    "no-headers": request(b"GET", b"/v2/", b"HTTP/1.1"),
    "http-1.0": request(b"HEAD", BLOB, b"HTTP/1.0", b"Host: x"),
    "http-1.0-keep-alive": request(b"HEAD", BLOB, b"HTTP/1.0", b"Connection: keep-alive"),
    "close": request(b"GET", MANIFEST, b"HTTP/1.1", b"Connection: close", b"Host: x"),
    "query": request(b"GET", b"/v2/_catalog?n=10&last=a/b", b"HTTP/1.1"),
    "empty-query": request(b"GET", b"/v2/?", b"HTTP/1.1"),
    "two-question-marks": request(b"GET", b"/v2/?a?b=c", b"HTTP/1.1"),
    "odd-visible-target": request(b"GET", b"/v2/a;b:c@d!$&'()*+,=~\\\"<>[]{}|^`", b"HTTP/1.1"),
    "many-headers": request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: x",
                            b"Accept: application/vnd.oci.image.manifest.v1+json, */*;q=0.5",
                            b"User-Agent: docker/27.0 go/go1.22", b"Accept-Encoding: gzip",
                            b"X-Forwarded-For: 10.1.2.3, 10.0.0.1", b"X-Forwarded-Proto: https",
                            b"Content-Type: text/plain", b"Cookie: a=b; c=d", b"X-Tab:\tvalue\twith\ttabs"),
    "one-scheme-header": request(b"GET", MANIFEST, b"HTTP/1.1", b"X-Forwarded-Ssl: off"),
    "token-name-chars": request(b"GET", MANIFEST, b"HTTP/1.1", b"X!#$&'*+-.^`|~09az: v"),
    "empty-value": request(b"GET", MANIFEST, b"HTTP/1.1", b"X-Empty:", b"X-Blank:   "),
    "64-fields": request(b"GET", MANIFEST, b"HTTP/1.1", *(b"X-F%02d: v" % i for i in range(64))),
    "line-at-limit": request(b"GET", b"/" + b"a" * (4094 - len(b"GET / HTTP/1.1")), b"HTTP/1.1"),
    "long-field": request(b"GET", MANIFEST, b"HTTP/1.1", b"X-Long: " + b"v" * 8000),
    "head-of-max-size": sized_head(MAX_HEAD) + b"\r\n\r\n",
}


@pytest.mark.parametrize("data", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_an_accepted_head_reads_as_gunicorn_reads_it(data: bytes) -> None:
    assert parse_head(head_of(data), ADDR[0], LIMITS) is not None
    quick, gunicorn = first(QuickParser, data), first(RequestParser, data)
    assert type(quick) is QuickRequest, quick
    assert type(gunicorn) is Request, gunicorn
    assert fields(quick) == fields(gunicorn)
    assert quick.raw == data
    assert as_wsgi_names(quick.environ) == _environ_of(gunicorn, ADDR)
    # The same, delivered a byte at a time, and with the conversion back to gunicorn's request (a head
    # and its blank line longer than MAX_HEAD are then gunicorn's: past MAX_HEAD bytes without an end).
    assert quick_count(per_byte(data)) == (1 if len(data) <= MAX_HEAD else 0)
    assert trace(QuickParser, per_byte(data)) == trace(RequestParser, per_byte(data)) == trace(RequestParser, [data])


def test_small_configured_limits_are_gunicorns() -> None:
    # Short lines, with enough fields that gunicorn's buffer limit stays far above what the reader holds.
    cfg = make_cfg(limit_request_line=32, limit_request_fields=2000, limit_request_field_size=20)
    at_limits = request(b"GET", b"/" + b"a" * (32 - len(b"GET / HTTP/1.1")), b"HTTP/1.1",
                        b"A: " + b"b" * 15, b"C: d", b"E: f")
    assert len(at_limits.split(b"\r\n")[0]) == 32 and len(b"A: " + b"b" * 15) + 2 == 20
    assert type(first(QuickParser, at_limits, cfg)) is QuickRequest
    assert trace(QuickParser, [at_limits], cfg) == trace(RequestParser, [at_limits], cfg)
    assert trace(RequestParser, [at_limits], cfg)[0][0] == "request"
    # Few fields: gunicorn's buffer limit is small enough to depend on where reads end, so the reader
    # stands aside and every head is gunicorn's.
    few = make_cfg(limit_request_line=32, limit_request_fields=3, limit_request_field_size=20)
    assert type(first(QuickParser, at_limits, few)) is Request
    assert trace(QuickParser, [at_limits], few) == trace(RequestParser, [at_limits], few)


def test_a_quick_request_is_what_gunicorns_loop_reads() -> None:
    parser = QuickParser(CFG, iter([request(b"HEAD", BLOB, b"HTTP/1.1", b"Host: x")]), ADDR)
    req = next(parser)
    assert type(req) is QuickRequest and parser.mesg is req and parser.req_count == 1
    assert req.parser is parser and req.body.read() == b"" and req.body.read(10) == b""
    assert not req.body.failed and req.proxy_protocol_info is None and req.fragment == ""
    assert parser.finish_body() is True
    with pytest.raises(StopIteration):
        next(parser)


# -- heads the reader refuses -------------------------------------------------------------------


def _many(count: int, size: int = 10) -> list[bytes]:
    return [b"X-H%03d: %s" % (i, b"v" * size) for i in range(count)]


# (bytes, settings changed, whether parse_head itself sees the refusal)
REFUSED: dict[str, tuple[bytes, dict[str, Any], bool]] = {
    "post": (request(b"POST", b"/v2/a/blobs/uploads/", b"HTTP/1.1", b"Host: x"), {}, True),
    "put-with-body": (request(b"PUT", MANIFEST, b"HTTP/1.1", b"Content-Length: 2", body=b"{}"), {}, True),
    "patch": (request(b"PATCH", b"/v2/a/blobs/uploads/u", b"HTTP/1.1", b"Content-Length: 0"), {}, True),
    "delete": (request(b"DELETE", MANIFEST, b"HTTP/1.1"), {}, True),
    "options": (request(b"OPTIONS", b"*", b"HTTP/1.1"), {}, True),
    "lowercase-get": (request(b"get", MANIFEST, b"HTTP/1.1"), {}, True),
    "get-with-suffix": (request(b"GETS", MANIFEST, b"HTTP/1.1"), {}, True),
    "percent": (request(b"GET", b"/v2/a%2Fb/manifests/v1", b"HTTP/1.1"), {}, True),
    "percent-in-query": (request(b"GET", b"/v2/_catalog?last=a%2Fb", b"HTTP/1.1"), {}, True),
    "hash": (request(b"GET", MANIFEST + b"#fragment", b"HTTP/1.1"), {}, True),
    "double-slash": (request(b"GET", b"//v2/a/manifests/v1", b"HTTP/1.1"), {}, True),
    "absolute-form": (request(b"GET", b"http://registry" + MANIFEST, b"HTTP/1.1", b"Host: x"), {}, True),
    "authority-form": (request(b"GET", b"registry:443", b"HTTP/1.1"), {}, True),
    "asterisk": (request(b"GET", b"*", b"HTTP/1.1"), {}, True),
    "non-ascii-target": (request(b"GET", b"/v2/\xc3\xa9", b"HTTP/1.1"), {}, True),
    "space-in-target": (request(b"GET", b"/v2/a b", b"HTTP/1.1"), {}, True),
    "double-space": (request(b"GET", b" /v2/", b"HTTP/1.1"), {}, True),
    "http-2.0": (request(b"GET", MANIFEST, b"HTTP/2.0"), {}, True),
    "http-1.2": (request(b"GET", MANIFEST, b"HTTP/1.2"), {}, True),
    "http-0.9": (request(b"GET", MANIFEST, b"HTTP/0.9"), {}, True),
    "lowercase-version": (request(b"GET", MANIFEST, b"http/1.1"), {}, True),
    "trailing-space-version": (request(b"GET", MANIFEST, b"HTTP/1.1 "), {}, True),
    "content-length-0": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Content-Length: 0"), {}, True),
    "content-length-body": (request(b"GET", MANIFEST, b"HTTP/1.1", b"content-length: 4", body=b"abcd"), {}, True),
    "two-content-lengths": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Content-Length: 0", b"Content-Length: 0"), {},
                            True),
    "chunked": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
                {}, True),
    "chunked-and-length": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Transfer-Encoding: chunked",
                                   b"Content-Length: 3", body=b"abc"), {}, True),
    "gzip-coding": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Transfer-Encoding: gzip"), {}, True),
    "unknown-coding": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Transfer-Encoding: foo"), {}, True),
    "expect-continue": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Expect: 100-continue"), {}, True),
    "expect-other": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Expect: something"), {}, True),
    "upgrade": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Connection: Upgrade", b"Upgrade: websocket"), {}, True),
    "upgrade-only": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Upgrade: h2c"), {}, True),
    "http2-settings": (request(b"GET", MANIFEST, b"HTTP/1.1", b"HTTP2-Settings: AAMAAABkAAQAAP__"), {}, True),
    "host-twice": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: a", b"Host: b"), {}, True),
    "host-twice-other-case": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: a", b"host: a"), {}, True),
    "authorization-twice": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Authorization: Bearer a",
                                    b"Authorization: Bearer b"), {}, True),
    "accept-twice": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Accept: a/b", b"accept: c/d"), {}, True),
    "connection-twice": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Connection: keep-alive", b"Connection: close"),
                         {}, True),
    "underscore-name": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X_Forwarded_For: 10.0.0.9"), {}, True),
    "underscore-shadowing": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-Forwarded-For: 1.1.1.1",
                                     b"X_Forwarded_For: 2.2.2.2"), {}, True),
    "script-name": (request(b"GET", MANIFEST, b"HTTP/1.1", b"SCRIPT_NAME: /v2"), {}, True),
    "space-before-colon": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Host : x"), {}, True),
    "tab-before-colon": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Host\t: x"), {}, True),
    "percent-in-name": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X%41: b"), {}, True),
    "bad-name-char": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X(a): b"), {}, True),
    "empty-name": (request(b"GET", MANIFEST, b"HTTP/1.1", b": b"), {}, True),
    "no-colon": (request(b"GET", MANIFEST, b"HTTP/1.1", b"NoColonHere"), {}, True),
    "obs-fold": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: b", b" continued"), {}, True),
    "obs-fold-tab": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: b", b"\tcontinued"), {}, True),
    "bare-lf-everywhere": (b"GET " + MANIFEST + b" HTTP/1.1\nHost: x\n\n", {}, True),
    "bare-lf-in-head": (b"GET " + MANIFEST + b" HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", {}, True),
    "bare-lf-unterminated": (b"GET " + MANIFEST + b" HTTP/1.1\r\nHost: x\n\r\n", {}, True),
    "bare-lf-request-line": (b"GET " + MANIFEST + b" HTTP/1.1\n\r\n\r\n", {}, True),
    "bare-cr-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: b\rc"), {}, True),
    "bare-cr-end": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: b\r"), {}, True),
    "bare-cr-line": (b"GET " + MANIFEST + b" HTTP/1.1\rHost: x\r\n\r\n", {}, True),
    "nul-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: a\x00b"), {}, True),
    "control-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: a\x01b"), {}, True),
    "escape-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: a\x1bb"), {}, True),
    "del-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: a\x7f"), {}, True),
    "latin1-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: caf\xe9"), {}, True),
    "high-byte-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: \x80\xff"), {}, True),
    "utf8-value": (request(b"GET", MANIFEST, b"HTTP/1.1", b"User-Agent: \xe2\x9c\x93"), {}, True),
    "high-byte-name": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-\xdf: b"), {}, True),
    "connection-upgrade": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Connection: upgrade"), {}, True),
    "connection-list": (request(b"GET", MANIFEST, b"HTTP/1.0", b"Connection: keep-alive, te"), {}, True),
    "connection-close-list": (request(b"GET", MANIFEST, b"HTTP/1.1", b"Connection: close, te"), {}, True),
    "connection-empty": (request(b"GET", MANIFEST, b"HTTP/1.0", b"Connection:"), {}, True),
    "scheme-headers-disagree": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-Forwarded-Proto: https",
                                        b"X-Forwarded-Ssl: off"), {}, True),
    "scheme-headers-agree": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-Forwarded-Proto: https",
                                     b"X-Forwarded-Ssl: on"), {}, True),
    "too-many-fields": (request(b"GET", MANIFEST, b"HTTP/1.1", *_many(4)), {"limit_request_fields": 3}, True),
    "more-than-max-fields": (request(b"GET", MANIFEST, b"HTTP/1.1", *_many(MAX_FIELDS + 1)), {}, True),
    "more-than-gunicorns-fields": (request(b"GET", MANIFEST, b"HTTP/1.1", *_many(101)), {}, True),
    "request-line-too-long": (request(b"GET", b"/" + b"a" * 40, b"HTTP/1.1"), {"limit_request_line": 32}, True),
    "request-line-over-default": (request(b"GET", b"/" + b"a" * 4094, b"HTTP/1.1"), {}, True),
    "field-too-long": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: " + b"b" * 20),
                       {"limit_request_field_size": 20}, True),
    "field-over-default": (request(b"GET", MANIFEST, b"HTTP/1.1", b"X-A: " + b"b" * 8190), {}, True),
    "leading-empty-line": (b"\r\n" + request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: x"), {}, True),
    "two-leading-empty-lines": (b"\r\n\r\n" + request(b"GET", MANIFEST, b"HTTP/1.1"), {}, True),
    "empty-request-line": (b"\r\n\r\n", {}, True),
    # Refused by the reader before parse_head: the head is longer than MAX_HEAD.
    "head-over-max-size": (sized_head(MAX_HEAD + 1) + b"\r\n\r\n", {}, False),
    "head-far-over-max-size": (sized_head(MAX_HEAD * 2) + b"\r\n\r\n", {}, False),
}


@pytest.mark.parametrize("data,overrides,by_parse_head", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_head_is_gunicorns_byte_for_byte(data: bytes, overrides: dict[str, Any],
                                                   by_parse_head: bool) -> None:
    cfg = make_cfg(**overrides)
    if by_parse_head:
        assert parse_head(head_of(data), ADDR[0], Limits(cfg)) is None
    quick, gunicorn = first(QuickParser, data, cfg), first(RequestParser, data, cfg)
    assert type(quick) is not QuickRequest
    assert type(quick) is type(gunicorn)
    if isinstance(gunicorn, Exception):
        assert str(quick) == str(gunicorn)
    else:
        assert type(quick) is Request
        assert fields(quick) == fields(gunicorn)
        assert quick.body.read() == gunicorn.body.read()
    assert quick_count([data], cfg) == 0
    # The whole connection.
    assert trace(QuickParser, [data], cfg) == trace(RequestParser, [data], cfg)


@pytest.mark.parametrize("data,overrides", [
    pytest.param(data, overrides, id=name) for name, (data, overrides, _) in REFUSED.items()])
def test_a_refused_head_read_a_byte_at_a_time(data: bytes, overrides: dict[str, Any]) -> None:
    cfg = make_cfg(**overrides)
    assert trace(QuickParser, per_byte(data), cfg) == trace(RequestParser, per_byte(data), cfg)


def test_refused_heads_cover_both_of_gunicorns_answers() -> None:
    """The list above is not all errors: many refused heads are requests gunicorn serves."""
    answers = {name: first(RequestParser, data, make_cfg(**overrides))
               for name, (data, overrides, _) in REFUSED.items()}
    served = {name for name, answer in answers.items() if type(answer) is Request}
    assert {"post", "percent", "hash", "double-slash", "absolute-form", "http-1.2", "content-length-0", "chunked",
            "expect-continue", "upgrade", "http2-settings", "authorization-twice", "underscore-name"} <= served
    assert type(answers["obs-fold"]) is errors.ObsoleteFolding
    assert type(answers["host-twice"]) is errors.InvalidHeader
    assert type(answers["two-content-lengths"]) is errors.InvalidHeader
    assert type(answers["scheme-headers-disagree"]) is errors.InvalidSchemeHeaders
    assert type(answers["too-many-fields"]) is errors.LimitRequestHeaders
    assert type(answers["request-line-too-long"]) is errors.LimitRequestLine
    assert type(answers["field-too-long"]) is errors.LimitRequestHeaders
    assert type(answers["lowercase-get"]) is errors.InvalidRequestMethod
    assert type(answers["http-2.0"]) is errors.InvalidHTTPVersion
    assert type(answers["space-before-colon"]) is errors.InvalidHeaderName
    assert type(answers["nul-value"]) is errors.InvalidHeader
    assert {"leading-empty-line", "more-than-max-fields", "head-over-max-size", "latin1-value",
            "scheme-headers-agree", "script-name"} <= served
    assert ("SCRIPT_NAME", "/v2") in answers["script-name"].headers  # from a trusted peer, gunicorn keeps it
    assert answers["underscore-name"].headers == []  # and drops other names with "_"


def test_a_bare_lf_in_an_unfinished_head_is_refused_at_once() -> None:
    """gunicorn refuses a bare LF without waiting for the rest of the head; so does the reader."""
    partial = b"GET " + MANIFEST + b" HTTP/1.1\r\nHost: x\nX-A"
    for parser_class in (RequestParser, QuickParser):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(partial)
            b.settimeout(2)
            with pytest.raises(errors.InvalidHeader):
                next(parser_class(CFG, b, ADDR))


def test_a_connection_that_ends_is_ended_as_gunicorn_ends_it() -> None:
    assert trace(QuickParser, []) == trace(RequestParser, []) == []
    assert trace(QuickParser, [b""]) == trace(RequestParser, [b""]) == []
    partial = b"GET " + MANIFEST + b" HTTP/1.1\r\nHost: x\r\n"
    expected = trace(RequestParser, [partial])
    assert expected[-1][:2] == ("error", errors.NoMoreData)
    assert trace(QuickParser, [partial]) == expected
    assert trace(QuickParser, per_byte(partial)) == trace(RequestParser, per_byte(partial))
    # After a whole request.
    data = request(b"HEAD", BLOB, b"HTTP/1.1") + partial
    assert trace(QuickParser, [data]) == trace(RequestParser, [data])
    assert trace(QuickParser, [data])[-1][:2] == ("error", errors.NoMoreData)


# -- pipelining: nothing lost, nothing reordered ------------------------------------------------

PIPELINE = [
    request(b"HEAD", BLOB, b"HTTP/1.1", b"Host: x"),
    request(b"GET", MANIFEST, b"HTTP/1.1", b"Accept: */*"),
    request(b"POST", b"/v2/a/blobs/uploads/?digest=sha256:x", b"HTTP/1.1", b"Content-Length: 5", body=b"hello"),
    request(b"GET", b"/v2/after-post", b"HTTP/1.1"),
    # A body that looks like a request: it is a body.
    request(b"PUT", MANIFEST, b"HTTP/1.1", b"Content-Length: 31", body=b"GET /smuggled HTTP/1.1\r\nX: y\r\n\r\n"[:31]),
    request(b"GET", b"/v2/%41", b"HTTP/1.1"),
    request(b"HEAD", BLOB, b"HTTP/1.1"),
    request(b"PATCH", b"/v2/a/blobs/uploads/u", b"HTTP/1.1", b"Transfer-Encoding: chunked",
            body=b"4\r\nabcd\r\n0\r\n\r\n"),
    request(b"GET", b"/v2/after-chunked?x=1", b"HTTP/1.1", b"X_Dropped: 1"),
    request(b"GET", b"/v2/after-chunked?x=2", b"HTTP/1.1"),
    request(b"GET", MANIFEST, b"HTTP/1.1", b"Content-Length: 4", body=b"GET "),
    request(b"HEAD", BLOB, b"HTTP/1.1", b"Connection: close"),
    request(b"GET", b"/v2/never-read", b"HTTP/1.1"),
]
PIPELINED = b"".join(PIPELINE)


def test_pipelined_requests_are_read_in_order_with_their_bodies() -> None:
    expected = trace(RequestParser, [PIPELINED])
    assert [(entry[1], entry[2], entry[-1]) for entry in expected] == [
        ("HEAD", BLOB.decode(), b""),
        ("GET", MANIFEST.decode(), b""),
        ("POST", "/v2/a/blobs/uploads/?digest=sha256:x", b"hello"),
        ("GET", "/v2/after-post", b""),
        ("PUT", MANIFEST.decode(), b"GET /smuggled HTTP/1.1\r\nX: y\r\n\r\n"[:31]),
        ("GET", "/v2/%41", b""),
        ("HEAD", BLOB.decode(), b""),
        ("PATCH", "/v2/a/blobs/uploads/u", b"abcd"),
        ("GET", "/v2/after-chunked?x=1", b""),
        ("GET", "/v2/after-chunked?x=2", b""),
        ("GET", MANIFEST.decode(), b"GET "),
        ("HEAD", BLOB.decode(), b""),  # Connection: close: the last one is never read
    ]
    assert quick_count([PIPELINED]) == 6
    for convert in ("all", "none", "alternate"):
        assert trace(QuickParser, [PIPELINED], convert=convert) == expected, convert
        assert trace(QuickParser, per_byte(PIPELINED), convert=convert) == expected, convert
        assert trace(QuickParser, [PIPELINED[i:i + 7] for i in range(0, len(PIPELINED), 7)],
                     convert=convert) == expected, convert


def test_unread_bodies_are_drained_before_the_next_head() -> None:
    """The application need not read a body: gunicorn's loop drains it, and the next head is read after it."""
    parser = QuickParser(CFG, iter([PIPELINED]), ADDR)
    seen = []
    for req in parser:
        seen.append((type(req).__name__, req.method, req.path))
    assert seen == [("QuickRequest", "HEAD", BLOB.decode()), ("QuickRequest", "GET", MANIFEST.decode()),
                    ("Request", "POST", "/v2/a/blobs/uploads/"), ("QuickRequest", "GET", "/v2/after-post"),
                    ("Request", "PUT", MANIFEST.decode()), ("Request", "GET", "/v2/%41"),
                    ("QuickRequest", "HEAD", BLOB.decode()), ("Request", "PATCH", "/v2/a/blobs/uploads/u"),
                    ("Request", "GET", "/v2/after-chunked"), ("QuickRequest", "GET", "/v2/after-chunked"),
                    ("Request", "GET", MANIFEST.decode()), ("QuickRequest", "HEAD", BLOB.decode())]


def test_full_request_reads_the_same_bytes_before_what_follows() -> None:
    data = (request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: x")
            + request(b"POST", b"/v2/a/blobs/uploads/", b"HTTP/1.1", b"Content-Length: 3", body=b"xyz")
            + request(b"HEAD", BLOB, b"HTTP/1.1"))
    parser = QuickParser(CFG, iter([data]), ADDR)
    quick = next(parser)
    assert type(quick) is QuickRequest and parser.req_count == 1
    full = parser.full_request(quick)
    assert type(full) is Request and parser.mesg is full and full.req_number == 1
    assert fields(full) == fields(quick)
    post = next(parser)
    assert (type(post), post.method, post.body.read(), parser.req_count) == (Request, "POST", b"xyz", 2)
    last = next(parser)
    assert (type(last), last.method, last.path, parser.req_count) == (QuickRequest, "HEAD", BLOB.decode(), 3)
    assert fields(parser.full_request(last)) == fields(last)
    with pytest.raises(StopIteration):
        next(parser)


def test_pipelined_requests_over_a_socket() -> None:
    """The same over a real socket: the reader's 8 KiB reads cut heads anywhere."""
    data = PIPELINED.replace(b"Connection: close", b"Connection: keep-alive") * 40
    assert len(data) > 3 * 8192

    def over_socket(parser_class: type[RequestParser], convert: str) -> list[tuple[Any, ...]]:
        a, b = socket.socketpair()
        with a, b:
            sender = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)), daemon=True)
            sender.start()
            b.settimeout(10)
            seen = trace(parser_class, b, convert=convert)
            sender.join(10)
            return seen

    expected = over_socket(RequestParser, "all")
    assert len(expected) == 13 * 40  # every request of every copy, then the end of the connection
    assert over_socket(QuickParser, "all") == expected
    assert over_socket(QuickParser, "none") == expected


# -- the differential test ----------------------------------------------------------------------

DIFFERENTIAL: dict[str, bytes] = {
    **{f"accepted-{name}": data for name, data in ACCEPTED.items()},
    **{f"refused-{name}": data for name, (data, overrides, _) in REFUSED.items() if not overrides},
    "pipeline": PIPELINED,
    "three-gets": request(b"GET", b"/v2/", b"HTTP/1.1") * 3,
    "http-1.0-then-more": request(b"HEAD", BLOB, b"HTTP/1.0") + request(b"HEAD", BLOB, b"HTTP/1.1"),
    "http-1.0-keep-alive-then-more": request(b"HEAD", BLOB, b"HTTP/1.0", b"Connection: keep-alive")
    + request(b"GET", b"/v2/", b"HTTP/1.1"),
    "empty-line-between": request(b"GET", b"/v2/", b"HTTP/1.1") + b"\r\n" + request(b"GET", b"/v2/next", b"HTTP/1.1"),
    "garbage-after": request(b"GET", b"/v2/", b"HTTP/1.1") + b"garbage\r\n\r\n",
    "refused-error-midway": request(b"GET", b"/v2/", b"HTTP/1.1")
    + request(b"GET", b"/v2/", b"HTTP/1.1", b"Host: a", b"Host: b") + request(b"GET", b"/v2/unreachable", b"HTTP/1.1"),
    "empty-body-then-head": request(b"GET", b"/v2/", b"HTTP/1.1", b"Content-Length: 0")
    + request(b"HEAD", BLOB, b"HTTP/1.1"),
    "bare-lf-in-second": request(b"GET", b"/v2/", b"HTTP/1.1") + b"GET /v2/next HTTP/1.1\r\nHost: x\n\r\n",
    "long-head-between": request(b"GET", b"/v2/", b"HTTP/1.1") + sized_head(MAX_HEAD + 100) + b"\r\n\r\n"
    + request(b"GET", b"/", b"HTTP/1.1"),
}


@pytest.mark.parametrize("data", [
    pytest.param(data, id=name) for name, data in DIFFERENTIAL.items()])
def test_differential_against_gunicorns_parser(data: bytes) -> None:
    splits = ([data], per_byte(data), [data[:len(data) // 2], data[len(data) // 2:]],
              [data[i:i + 4096] for i in range(0, len(data), 4096)])
    for chunks in splits:
        expected = trace(RequestParser, chunks)
        for convert in ("all", "none", "alternate"):
            assert trace(QuickParser, chunks, convert=convert) == expected, (convert, chunks[:3])


# Mostly what the reader takes, with a share of everything it must hand over.
_METHODS = st.sampled_from([b"GET"] * 6 + [b"HEAD"] * 6 + [b"POST", b"get", b"PUT", b"OPTIONS", b"GE T"])
_GOOD_TARGETS = st.sampled_from([b"/", b"/v2/", MANIFEST, BLOB, b"/v2/_catalog?n=1", b"/a?b?c", b"/?", b"/a;b",
                                 b"/a:b", b"/a\\b"])
_TARGETS = st.one_of(
    _GOOD_TARGETS, _GOOD_TARGETS, _GOOD_TARGETS,
    st.sampled_from([b"//x", b"/a%2F", b"/a#f", b"http://h/x", b"*", b"", b"/\x80"]),
    st.binary(min_size=0, max_size=12).map(lambda tail: b"/" + tail),
)
_VERSIONS = st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0"] * 3 + [b"HTTP/1.2", b"HTTP/2.0", b"http/1.1",
                                                                      b"HTTP/1.1 "])
_NAMES = st.sampled_from([b"Host", b"Accept", b"Authorization", b"User-Agent", b"X-Request-Id", b"Accept-Encoding",
                          b"X-Forwarded-For", b"Cookie", b"X-A", b"x-a", b"Connection", b"X-Forwarded-Proto",
                          b"X-Forwarded-Ssl"] * 3
                         + [b"Content-Length", b"Transfer-Encoding", b"X_Y", b"Bad Name", b"", b"Expect", b"Upgrade",
                            b"SCRIPT_NAME", b"Content-Type", b"HTTP2-Settings", b"X-\xe9", b"Host "])
_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=10).map(str.encode)
_VALUES = st.one_of(
    _PRINTABLE, _PRINTABLE, _PRINTABLE,
    st.sampled_from([b"close", b" close ", b"keep-alive", b"Close", b"close, te", b"0", b"3", b"chunked", b"https",
                     b"on", b"off", b"100-continue", b"h2c", b"\tv\t", b""]),
    st.binary(min_size=0, max_size=4),
)
_EOL = st.sampled_from([b"\r\n"] * 40 + [b"\n", b"\r", b"\r\n "])


_CLEAN_NAMES = [b"Host", b"Accept", b"Authorization", b"User-Agent", b"X-Request-Id", b"Accept-Encoding",
                b"X-Forwarded-For", b"Cookie", b"X-A", b"Connection", b"X-Forwarded-Proto"]


@st.composite
def _clean_head(draw: st.DrawFn) -> bytes:
    """A head the reader takes."""
    data = draw(st.sampled_from([b"GET", b"HEAD"])) + b" " + draw(_GOOD_TARGETS) + b" "
    data += draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"])) + b"\r\n"
    for name in draw(st.lists(st.sampled_from(_CLEAN_NAMES), unique=True, max_size=5)):
        value = draw(st.sampled_from([b"close", b" Keep-Alive "]) if name == b"Connection" else _PRINTABLE)
        data += name + draw(st.sampled_from([b":", b": "])) + value + b"\r\n"
    return data + b"\r\n"


@st.composite
def _any_head(draw: st.DrawFn) -> bytes:
    """A head of anything, often something the reader must hand over, sometimes with a body."""
    data = b"\r\n" if draw(st.integers(0, 19)) == 0 else b""
    data += draw(_METHODS) + b" " + draw(_TARGETS) + b" " + draw(_VERSIONS) + draw(_EOL)
    for _ in range(draw(st.integers(0, 4))):
        data += draw(_NAMES) + draw(st.sampled_from([b":", b": ", b": ", b" :"])) + draw(_VALUES) + draw(_EOL)
    return data + draw(_EOL) + draw(st.sampled_from([b"", b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n"]))


_HEADS = st.lists(st.one_of(_clean_head(), _any_head()), min_size=1, max_size=4).map(b"".join)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_HEADS, cuts=st.lists(st.integers(1, 400), max_size=4),
       cfg_index=st.integers(0, 2), convert=st.sampled_from(["all", "none", "alternate"]))
def test_generated_heads_read_as_gunicorn_reads_them(data: bytes, cuts: list[int], cfg_index: int,
                                                     convert: str) -> None:
    # With small limits the reader stands aside (gunicorn's reading of a head then depends on
    # where the reads end): test_a_head_split_across_reads_with_small_limits.
    cfg = [CFG, make_cfg(limit_request_line=24, limit_request_fields=2, limit_request_field_size=16),
           make_cfg(limit_request_line=0, limit_request_fields=0, limit_request_field_size=0)][cfg_index]
    points = sorted({cut for cut in cuts if cut < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert trace(QuickParser, chunks, cfg, convert=convert) == trace(RequestParser, chunks, cfg)


# -- refused as early as gunicorn refuses, whatever the limits ------------------------------------


@pytest.mark.parametrize("parser", [QuickParser, RequestParser], ids=["quick", "gunicorn"])
@pytest.mark.parametrize("partial,error", [
    (b"get " + MANIFEST + b" HTTP/1.1\r\nHost: x\r\n", errors.InvalidRequestMethod),
    (b"GET " + MANIFEST + b" HTTP/9.9\r\n", errors.InvalidHTTPVersion),
    (b"GET " + MANIFEST + b" HTTP/1.1 junk\r\n", errors.InvalidHTTPVersion),
    (b"GET /" + b"a" * 5000, errors.LimitRequestLine),
], ids=["lowercase-method", "version", "junk-after-version", "long-request-line"])
def test_a_request_line_gunicorn_refuses_is_refused_before_the_head_ends(parser: type[Any], partial: bytes,
                                                                         error: type[Exception]) -> None:
    """Plain gunicorn refuses these without waiting for the rest of the head; so does the reader."""
    a, b = socket.socketpair()
    with a, b:
        a.sendall(partial)
        b.settimeout(0.3)
        with pytest.raises(error):
            next(parser(CFG, b, ADDR))


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_a_head_split_across_reads_with_small_limits(method: bytes) -> None:
    """gunicorn refuses a head whose end arrives in a read bringing more than
    limit_request_fields*(limit_request_field_size+2)+4 bytes after the request line: with limits
    that small, the reader stands aside and that refusal stays gunicorn's."""
    cfg = make_cfg(limit_request_fields=1, limit_request_field_size=100)
    chunks = [method + b" /v2/ HTTP/1.1\r\nHost: x",
              b"\r\n\r\n" + request(b"GET", b"/v2/next", b"HTTP/1.1") * 8]
    gunicorn = trace(RequestParser, chunks, cfg)
    assert gunicorn == [("error", errors.LimitRequestHeaders, "max buffer headers")]
    assert trace(QuickParser, chunks, cfg) == gunicorn


# -- the worker's use of it ---------------------------------------------------------------------


def test_the_parser_factory_makes_quick_parsers_for_http_1_only() -> None:
    made_by_gunicorn: list[tuple[Any, ...]] = []

    def get_parser(cfg: Any, source: Any, source_addr: Any, http2_connection: bool = False) -> Any:
        made_by_gunicorn.append((cfg, source, source_addr, http2_connection))
        return types.SimpleNamespace(unreader="gunicorn's")

    made = _quick_parser_seen_by_deadline(get_parser)
    deadline = types.SimpleNamespace(unreader=None)
    worker_module._deadlines[getcurrent()] = deadline
    a, b = socket.socketpair()
    try:
        parser = made(CFG, b, ADDR)
        assert type(parser) is QuickParser and made_by_gunicorn == []
        assert deadline.unreader is parser.unreader
        made(CFG, b, ADDR, True)
        assert made_by_gunicorn == [(CFG, b, ADDR, True)] and deadline.unreader == "gunicorn's"
        uwsgi = make_cfg(protocol="uwsgi")
        made(uwsgi, b, ADDR)
        assert made_by_gunicorn[-1] == (uwsgi, b, ADDR, False)
    finally:
        del worker_module._deadlines[getcurrent()]
        a.close()
        b.close()
    # Outside a worker's connection (no deadline), a parser all the same.
    assert type(made(CFG, iter([b""]), ADDR)) is QuickParser


@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_a_proxy_protocol_listener_is_all_gunicorns(mode: str) -> None:
    cfg = make_cfg(proxy_protocol=mode, proxy_allow_ips="*")
    data = (b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\n" + request(b"HEAD", BLOB, b"HTTP/1.1")
            + request(b"GET", MANIFEST, b"HTTP/1.1"))
    assert quick_count([data], cfg) == 0
    expected = trace(RequestParser, [data], cfg)
    assert [entry[:3] for entry in expected] == [("request", "HEAD", BLOB.decode()),
                                                 ("request", "GET", MANIFEST.decode())]
    assert trace(QuickParser, [data], cfg) == expected
    req = next(QuickParser(cfg, iter([data]), ADDR))
    assert type(req) is Request and req.proxy_protocol_info["client_addr"] == "192.0.2.1"


def test_quick_false_is_gunicorns_parser() -> None:
    parser = QuickParser(CFG, iter([PIPELINED]), ADDR, quick=False)
    assert all(type(req) is Request for req in parser)


class _Hot:
    """The read cache's side of a hit (services/api/hot_reads.py): a fixed answer, or None for a miss."""

    def __init__(self, answer: tuple[str, list[tuple[str, str]], bytes] | None) -> None:
        self.answer = answer
        self.seen: list[dict[str, Any]] = []

    def respond(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes] | None:
        self.seen.append(environ)
        return self.answer


def _worker(hot: _Hot, keepalive: int = 5) -> GatewayWorker:
    worker = GatewayWorker.__new__(GatewayWorker)  # gunicorn's constructor wants an arbiter
    worker.wsgi = types.SimpleNamespace(extensions={"wharf.hot_reads": hot})
    worker.cfg = make_cfg(keepalive=keepalive)
    worker.nr, worker.max_requests, worker.alive = 0, 1000, True
    worker.__dict__["_figures"] = HttpMetrics()
    return worker


def _answer(data: bytes, hot: _Hot, keepalive: int = 5) -> tuple[bytes, bool | None, bool]:
    """What the worker writes for the first request of ``data``, what _answer_hit returns, whether it ends the loop."""
    parser = QuickParser(CFG, iter([data]), ADDR)
    req = next(parser)
    a, b = socket.socketpair()
    with a, b:
        try:
            answered, stopped = _worker(hot, keepalive)._answer_hit(req, a, ADDR, 0.0), False
        except StopIteration:
            answered, stopped = None, True
        b.settimeout(0.2)
        try:
            written = b.recv(65536)
        except TimeoutError:
            written = b""
    return written, answered, stopped


HIT = ("manifest", [("Content-Type", "application/json"), ("Content-Length", "2")], b"{}")


def test_a_hit_is_answered_from_the_quick_request() -> None:
    hot = _Hot(HIT)
    data = request(b"GET", MANIFEST, b"HTTP/1.1", b"Accept: application/json", b"Authorization: Bearer t")
    written, answered, stopped = _answer(data, hot)
    assert answered is True and not stopped
    head, body = written.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and b"Connection: keep-alive" in lines
    assert b"Content-Type: application/json" in lines and b"Content-Length: 2" in lines and body == b"{}"
    assert hot.seen[0]["HTTP_AUTHORIZATION"] == "Bearer t" and hot.seen[0]["PATH_INFO"] == MANIFEST.decode()


@pytest.mark.parametrize("version,connection,keepalive", [
    (b"HTTP/1.1", b"Connection: close", 5), (b"HTTP/1.0", b"X-A: b", 5), (b"HTTP/1.1", b"X-A: b", 0)])
def test_a_hit_that_ends_the_connection(version: bytes, connection: bytes, keepalive: int) -> None:
    written, answered, stopped = _answer(request(b"HEAD", BLOB, version, connection), _Hot(HIT), keepalive)
    assert stopped and answered is None
    assert written.startswith(b"HTTP/1.%s 200 OK\r\n" % version[-1:]) and b"\r\nConnection: close\r\n" in written


def test_http_1_0_keep_alive_hit_keeps_the_connection() -> None:
    written, answered, stopped = _answer(request(b"HEAD", BLOB, b"HTTP/1.0", b"Connection: keep-alive"), _Hot(HIT))
    assert answered is True and not stopped
    assert written.startswith(b"HTTP/1.0 200 OK\r\n") and b"\r\nConnection: keep-alive\r\n" in written


def test_a_miss_is_served_from_gunicorns_request(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(GeventWorker, "handle_request",
                        lambda self, listener_name, req, sock, addr: served.append(req) or True)
    data = (request(b"GET", MANIFEST, b"HTTP/1.1", b"Host: x", b"Accept: */*")
            + request(b"POST", b"/v2/a/blobs/uploads/", b"HTTP/1.1", b"Host: x", b"Content-Length: 2", body=b"ok")
            + request(b"HEAD", BLOB, b"HTTP/1.1", b"Host: x"))
    hot = _Hot(None)
    worker = _worker(hot)
    parser = QuickParser(CFG, iter([data]), ADDR)
    quick = next(parser)
    a, b = socket.socketpair()
    with a, b:
        assert worker._handle_request(("127.0.0.1", 5000), quick, a, ADDR, 12.5) is True
        head = next(parser)
        assert worker._handle_request(("127.0.0.1", 5000), head, a, ADDR, 13.5) is True
        b.settimeout(0.1)
        with pytest.raises(TimeoutError):
            b.recv(1)  # nothing written by the worker itself on a miss
    full = served[0]
    assert type(full) is Request and parser.mesg is not quick and fields(full) == fields(quick)
    assert full.wharf_started == 12.5
    assert type(head) is Request and head.method == "POST" and head.body.read() == b"ok"
    assert hot.seen == [quick.environ] and hot.seen[0] is quick.environ  # a POST is never asked about
    assert served[1] is head
    last = next(parser)
    assert type(last) is QuickRequest and last.path == BLOB.decode()


def test_send_writes_everything_on_a_gevent_socket() -> None:
    data = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than one send takes
    a, b = gevent.socket.socketpair()
    received = bytearray()

    def read() -> None:
        while len(received) < len(data):
            chunk = b.recv(1 << 20)
            if not chunk:
                break
            received.extend(chunk)

    with a, b:
        reader = gevent.spawn(read)
        _send(a, data)
        reader.join(timeout=10)
    assert bytes(received) == data


def test_send_writes_everything_on_another_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        _send(a, b"HTTP/1.1 200 OK\r\n\r\n")
        assert b.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_heads_at_every_split_point() -> None:
    """Every place a read can end in a short pipeline of accepted and refused heads."""
    data = (request(b"HEAD", BLOB, b"HTTP/1.1", b"Host: x") + request(b"GET", b"/v2/%41", b"HTTP/1.1")
            + request(b"GET", MANIFEST, b"HTTP/1.0", b"Connection: keep-alive")
            + request(b"POST", b"/v2/u", b"HTTP/1.1", b"Content-Length: 4", body=b"\r\n\r\n")
            + request(b"GET", b"/v2/end", b"HTTP/1.1"))
    expected = trace(RequestParser, [data])
    assert len(expected) == 5
    for cut in range(1, len(data)):
        assert trace(QuickParser, [data[:cut], data[cut:]], convert="alternate") == expected, cut
    for size in (2, 3, 5, 16, 64):
        assert trace(QuickParser, [data[i:i + size] for i in range(0, len(data), size)]) == expected, size
