"""A tiny OTLP/HTTP trace receiver: what a collector would see of the spans Wharf exports.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (as the
OpenTelemetry SDK's OTLP/HTTP exporter sends it), keeps every span with its resource's
``service.name``, and answers as a collector does (200, an empty ``ExportTraceServiceResponse``).
Anything else is refused, so a misdirected or malformed export shows up as missing spans.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PROTOBUF = "application/x-protobuf"
SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
MAX_BODY = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    kind: int  # Span.SpanKind
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # 16 hex digits, or "" for a root span
    attributes: dict[str, Any]


SpanTest = Callable[[ReceivedSpan], bool]


def named(service: str, name: str) -> SpanTest:
    return lambda span: (span.service, span.name) == (service, name)


def served_by(service: str) -> SpanTest:
    """A server span of ``service`` (one per call it served)."""
    return lambda span: span.service == service and span.kind == SERVER


def one(spans: list[ReceivedSpan], what: str, test: SpanTest) -> ReceivedSpan:
    found = [s for s in spans if test(s)]
    assert len(found) == 1, f"{len(found)} spans are {what}; the trace has:\n" + "\n".join(map(str, spans))
    return found[0]


def orphans(spans: list[ReceivedSpan], root_parent: str) -> list[ReceivedSpan]:
    """The spans whose parent is not among ``spans`` (nor ``root_parent``, the client's span)."""
    ids = {s.span_id for s in spans} | {root_parent}
    return [s for s in spans if s.parent_span_id not in ids]


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(ReceivedSpan(service, span.name, span.kind, span.trace_id.hex(), span.span_id.hex(),
                                          span.parent_span_id.hex(), _attributes(span.attributes)))
    return found


class OtlpReceiver:
    """Listens on a free loopback port until :meth:`stop`; ``endpoint`` is the base URL to give
    an exporter (``WHARF_OTLP_ENDPOINT``)."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.refused: list[str] = []  # why requests were refused: a test can show them on failure
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY))
                status, problem = receiver._problem(self.path, self.headers.get("Content-Type", ""), length)
                if problem:
                    receiver.refused.append(problem)
                    self._answer(status, b"")
                    return
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
                try:
                    spans = decode(body)
                except Exception as exc:  # a malformed export: say so, as a collector would
                    receiver.refused.append(f"undecodable body: {exc}")
                    self._answer(400, b"")
                    return
                with receiver._lock:
                    receiver._spans.extend(spans)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    @staticmethod
    def _problem(path: str, content_type: str, length: int) -> tuple[int, str]:
        """The status and reason to refuse an export with (200, "" when it is acceptable)."""
        if path != "/v1/traces":
            return 404, f"wrong path {path!r}"
        if content_type.split(";")[0].strip() != PROTOBUF:
            return 415, f"wrong content type {content_type!r}"
        if length <= 0 or length > MAX_BODY:
            return 400, f"bad length {length}"
        return 200, ""

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(self, ready: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0,
                 trace_id: str | None = None) -> list[ReceivedSpan]:
        """The spans (of ``trace_id``) once ``ready`` says they are all there, or whatever came
        within ``timeout`` (the caller's assertions then say what is missing)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans(trace_id)
            if ready(spans) or time.monotonic() >= deadline:
                return spans
            time.sleep(0.1)

    def trace(self, trace_id: str, root_parent: str, *needed: SpanTest, timeout: float = 15.0) -> list[ReceivedSpan]:
        """A trace's spans, once each of ``needed`` matches one of them and every span's parent
        has arrived (each process exports on its own, so one service's spans may come before
        another's); it fails when none came, or when a parent is still missing at ``timeout``."""
        def complete(spans: list[ReceivedSpan]) -> bool:
            return bool(spans) and all(any(test(s) for s in spans) for test in needed) \
                and not orphans(spans, root_parent)
        spans = self.wait_for(complete, timeout, trace_id)
        assert spans, f"no span of trace {trace_id} arrived; refused exports: {self.refused}"
        missing = orphans(spans, root_parent)
        assert missing == [], "spans whose parent never arrived:\n" + "\n".join(map(str, missing))
        return spans

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
