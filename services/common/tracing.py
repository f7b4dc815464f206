"""Traces (OpenTelemetry): one trace per request, from the gateway through every gRPC hop to
Redis and the storage backend, exported over OTLP/HTTP when ``WHARF_OTLP_ENDPOINT`` is set.

Off (the default), every function here returns at its first line: no provider, no span
objects, no context switches, so tracing costs nothing measurable unless it is turned on.
On, spans carry the request id (``wharf.request_id``), the W3C ``traceparent`` travels in
gRPC metadata (and is accepted from HTTP clients), and log lines name the trace.

The tracer is process-wide, like OpenTelemetry's own provider: each service's main (the
gateway: each worker, after the fork) calls :func:`configure` once.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["SpanKind", "carrier_of", "configure", "current_trace_id", "enabled", "end_request", "inject",
           "name_request", "span"]

_PROPAGATOR = TraceContextTextMapPropagator()
_PROPAGATED = ("traceparent", "tracestate")
_tracer: Any = None
_HTTP_METHOD = "http.request.method"
# The methods a span may be named after (OpenTelemetry's HTTP semantic conventions); others are _OTHER.
_HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


class _NoSpan:
    """What :func:`span` returns when tracing is off: a context manager that does nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (``http://host:4318``); a URL that
    already names ``/v1/traces`` is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def configure(service: str, endpoint: str) -> None:
    """Exports this process's spans, as ``wharf-<service>``, to ``endpoint`` (nothing when empty)."""
    global _tracer
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    # Every request is traced. A caller's traceparent names the trace to join, but its
    # "not sampled" flag is not obeyed: an HTTP client sending flags 00 would otherwise keep
    # its requests, and every call they make behind the gateway, out of the operator's traces.
    # An operator's own OTEL_TRACES_SAMPLER (a ratio, say) is theirs to choose, and wins.
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(
        root=ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    provider = TracerProvider(resource=Resource.create({"service.name": f"wharf-{service}"}), sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=5)))
    atexit.register(provider.shutdown)  # the last batch leaves before the process does
    _tracer = provider.get_tracer("wharf")


def enabled() -> bool:
    return _tracer is not None


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None,
         carrier: Mapping[str, str] | None = None) -> Any:
    """A context manager around a span named ``name``, the current span's child (or, given a
    ``carrier`` of propagated headers, the caller's); it records an exception that ends it."""
    if _tracer is None:
        return _NO_SPAN
    context = _PROPAGATOR.extract(carrier) if carrier is not None else None
    method = attributes.get(_HTTP_METHOD) if attributes is not None else None
    if attributes is not None and method is not None and method not in _HTTP_METHODS:
        # A client's invented method (any token gunicorn lets through) would name a span, and
        # every one a new operation in the tracing backend: OpenTelemetry's HTTP conventions.
        name = "HTTP" if name == method else name
        attributes = {**attributes, _HTTP_METHOD: "_OTHER"}
    return _tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes)


def name_request(name: str, attributes: Mapping[str, Any]) -> None:
    """Renames the current (server) span once the request's route is known."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    current.update_name(name)
    current.set_attributes(dict(attributes))


def end_request(status: int) -> None:
    """Records the HTTP status on the current (server) span; a 5xx marks it failed."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(trace.Status(trace.StatusCode.ERROR))


def carrier_of(pairs: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The propagation headers among gRPC metadata or HTTP headers (names compared lower-case)."""
    found: dict[str, str] = {}
    for key, value in pairs:
        lowered = key.lower()
        if lowered in _PROPAGATED and isinstance(value, str) and len(value) <= 512:
            found[lowered] = value
    return found


def inject() -> tuple[tuple[str, str], ...]:
    """The current span's context as gRPC metadata pairs (none when tracing is off)."""
    if _tracer is None:
        return ()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple(carrier.items())


def current_trace_id() -> str:
    """The current trace's id (32 hex digits), for log lines; empty when there is none."""
    if _tracer is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""
