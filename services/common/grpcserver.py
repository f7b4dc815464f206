"""Server side gRPC plumbing shared by the blob store, metadata and auth services: one
bootstrap (:func:`serve`), one asyncio server model, one interceptor.

The interceptor does five things for every call: refuses a caller without the stack's
internal token, adopts the caller's request id (and trace context), turns a
:class:`RegistryError` into a status plus trailing metadata (and Redis refusing a write
into UNAVAILABLE with a Retry-After, services/common/redis_refusals.py), counts and times the call
(services/common/metrics.py), and writes one structured log line. :func:`serve` also serves
the service's ``/metrics`` and sets up its traces when their settings ask for them. What the client side
shares with it (the request-id key, message limits) is in :mod:`services.common.rpc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import internal_auth, metrics, metrics_endpoint, redis_refusals, tracing
from services.common.errors import INTERNAL, UNAVAILABLE, RegistryError
from services.common.logs import AccessLog
from services.common.rpc import MAX_MESSAGE_BYTES, REQUEST_ID_KEY

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
log = logging.getLogger("wharf.rpc")

T = TypeVar("T")


async def shielded(step: Awaitable[T]) -> T:
    """``asyncio.shield`` for a step that must finish even when its call is cancelled (the client
    went away): a commit or a clean-up half done is worse than one done for no one. When the call
    is cancelled, the step's outcome is still retrieved once it ends: asyncio otherwise logs each
    such failure as "Task exception was never retrieved", a traceback at error level per client
    that left mid-call, which a client could repeat at will. A registry error there is the
    client's own (a digest that did not match); anything else is one warning line."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_retrieve)  # run soon if the step has already ended
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, RegistryError):
        log.warning("a step that outlived its cancelled call failed", extra={"fields": {"error": repr(exc)[:300]}})


def _request_id_from(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and len(value) <= 128:
            return value
    return uuid.uuid4().hex


class _CallAccounting:
    """What the interceptor does around a call: adopt the request id, log one line, and
    turn an exception into the registry error the caller receives (None: re-raise)."""

    def __init__(self, service: str, internal_token: str, backend_errors: tuple[type[Exception], ...] = ()) -> None:
        self._service = service
        self._token = internal_token
        self._access = AccessLog("wharf.rpc")
        # Failures of the service's own backend (Redis, S3, disk): the caller's 503, not a 500.
        self._backend_errors = backend_errors
        self._figures = metrics.CallFigures(metrics.GRPC_SERVER_CALLS, metrics.GRPC_SERVER_DURATION)
        # method -> (the service's handler, that handler wrapped in this accounting)
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def _log(self, method: str, started: float, code: str, error: str = "") -> None:
        """The call's log line and figures (``code``: a gRPC status name or a registry error code)."""
        seconds = time.perf_counter() - started
        self._figures.record(method, metrics.grpc_code(code), seconds)
        fields = {"service": self._service, "method": method, "request_id": request_id.get(),
                  "code": code, "ms": round(seconds * 1000, 2)}
        if error:
            fields["error"] = error
        self._access.write("rpc", fields)

    def _span(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        """The call's server span, the caller's child (tracing off: a no-op)."""
        if not tracing.enabled():
            return tracing.span(method)
        service, _, name = method.lstrip("/").partition("/")
        return tracing.span(method.lstrip("/"), tracing.SpanKind.SERVER, carrier=tracing.carrier_of(
            context.invocation_metadata() or ()), attributes={"rpc.system": "grpc", "rpc.service": service,
                                                              "rpc.method": name, "wharf.request_id": request_id.get()})

    def _intercepted(self, handler: Any, details: grpc.HandlerCallDetails, refuse: Callable[[Any], Any],
                     wrap_call: Callable[..., Any], wrap_stream: Callable[..., Any]) -> Any:
        """What the interceptor serves for a call: health checks as they are; a caller without the
        stack's internal token refused; anything else wrapped in the accounting above
        (``wrap_call`` for unary and client-streaming calls, ``wrap_stream`` for the streaming answers)."""
        if handler is None or internal_auth.is_open(details.method):
            return handler
        method = details.method
        if not internal_auth.is_authentic(details.invocation_metadata, self._token):
            self._log(method, time.perf_counter(), "UNAUTHENTICATED", "caller without the internal token")
            return refuse(handler)
        # Wrapped once per method: building the wrapper cost a twentieth of a small call's CPU.
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = (handler, self._wrap(handler, method, wrap_call, wrap_stream))
            self._wrapped[method] = wrapped
        return wrapped[1]

    @staticmethod
    def _wrap(handler: Any, method: str, wrap_call: Callable[..., Any], wrap_stream: Callable[..., Any]) -> Any:
        if handler.unary_unary:
            return handler._replace(unary_unary=wrap_call(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=wrap_call(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=wrap_stream(handler.unary_stream, method))
        return handler._replace(stream_stream=wrap_stream(handler.stream_stream, method))

    def _failure(self, exc: Exception, method: str, started: float) -> RegistryError | None:
        if isinstance(exc, RegistryError):
            self._log(method, started, exc.code, exc.message)
            return exc
        reason = redis_refusals.refusal(exc)
        if reason is not None:
            # Only the reason: a refused pipeline's message quotes its commands, arguments included.
            log.warning("Redis refuses writes", extra={"fields": {
                "service": self._service, "method": method, "request_id": request_id.get(),
                "reason": f"Redis {reason}", "error": type(exc).__name__}})
            self._log(method, started, UNAVAILABLE.code, f"Redis {reason}")
            return redis_refusals.writes_refused(reason)
        if isinstance(exc, self._backend_errors):
            self._log(method, started, UNAVAILABLE.code, f"{type(exc).__name__}: {exc}"[:300])
            return RegistryError(UNAVAILABLE, f"{self._service} backend unavailable, retry later")
        if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "AbortError":
            return None  # already an abort, or a call of ours that failed: let gRPC report it
        log.error("unhandled error", exc_info=exc, extra={"fields": {"method": method,
                                                                      "request_id": request_id.get()}})
        self._log(method, started, "INTERNAL", type(exc).__name__)
        return RegistryError(INTERNAL)


class ServiceInterceptor(_CallAccounting, grpc.aio.ServerInterceptor):
    """The interceptor of every service (all run on asyncio servers): unary and client-streaming
    calls (a coroutine), server- and bidirectional-streaming calls (an async generator; the
    metadata service's watch stream logs one line when it ends)."""

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        return self._intercepted(await continuation(details), details, _refusing, self._wrap_call,
                                 self._wrap_stream)

    async def _fail(self, exc: Exception, method: str, started: float, context: grpc.aio.ServicerContext) -> None:
        err = self._failure(exc, method, started)
        if err is None:
            raise exc
        context.set_trailing_metadata(err.trailing_metadata())
        await context.abort(err.error.grpc_status, err.message)

    def _wrap_call(self, fn: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            token = request_id.set(_request_id_from(context))
            try:
                with self._span(method, context):  # the log line, written inside, names the trace
                    try:
                        result = await fn(request, context)
                    except Exception as exc:
                        await self._fail(exc, method, started, context)
                    self._log(method, started, "OK")
                    return result
            finally:
                request_id.reset(token)
        return wrapper

    def _wrap_stream(self, fn: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            token = request_id.set(_request_id_from(context))
            try:
                with self._span(method, context):
                    try:
                        async for item in fn(request, context):
                            yield item
                    except Exception as exc:
                        await self._fail(exc, method, started, context)
                    self._log(method, started, "OK")
            finally:
                # A stream its caller left (a client gone mid-pull) is closed by asyncio's finalizer,
                # in another context than the one that set the id: resetting there raised, and
                # every such disconnect logged "Task exception was never retrieved" at error level.
                with contextlib.suppress(ValueError):
                    request_id.reset(token)
        return wrapper


_REFUSAL = "this service only answers callers that present the stack's internal token"


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that refuses the call."""
    async def refuse(_: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
    return _same_shape(handler, refuse)


def _same_shape(handler: grpc.RpcMethodHandler, refuse: Callable[..., Any]) -> grpc.RpcMethodHandler:
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Clients reconnect (and re-resolve DNS) every few minutes, so replicas added by scaling
    # out start receiving calls without restarting the gateways.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 3_600_000),
    # Each stream's receive window stays at gRPC's initial 64 KiB instead of growing with its
    # bandwidth-delay estimate: what a service buffers for its callers is then at most that per
    # stream. With the estimate on, 500 slow uploads into a blob store whose disk lagged
    # (load_bench (b)) grew its windows to ~2.6 MB each: 1.2-1.3 GB resident, against 309 MB
    # with it off. A single large push loses up to ~10% (docs/performance.md).
    ("grpc.http2.bdp_probe", 0),
]


async def serve(service: str, address: str, register: Callable[[grpc.aio.Server], Iterable[str]], *,
                    internal_token: str, backend_errors: tuple[type[Exception], ...] = (), grace: float = 10.0,
                    on_port: Callable[[int], None] | None = None,
                    on_stop: Callable[[], Awaitable[None]] | None = None,
                    metrics_address: str = "", collectors: Iterable[Any] = (), otlp_endpoint: str = "") -> None:
    """Runs an asyncio gRPC server with health checking until SIGTERM/SIGINT, then drains it.

    ``on_stop`` runs before the drain: it ends long-lived streams, which would hold it up.
    With a ``metrics_address``, the service's figures (its group in services/common/metrics.py
    and ``collectors``, read when scraped) are served there; with an ``otlp_endpoint``, its
    spans are exported there.
    """
    from grpc_health.v1._async import HealthServicer as AioHealthServicer

    tracing.configure(service, otlp_endpoint)
    metrics_server = None
    if metrics_address:
        metrics_server, _ = metrics_endpoint.serve(metrics_address, metrics.registry_for(service, *collectors))

    interceptor = ServiceInterceptor(service, internal_token, backend_errors)
    server = grpc.aio.server(interceptors=[interceptor], options=SERVER_OPTIONS)
    names = list(register(server))
    health_servicer = AioHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"{service}: cannot bind {address}")
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    if on_port:
        on_port(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    if on_stop is not None:
        await on_stop()
    await server.stop(grace)
    if metrics_server is not None:
        metrics_server.shutdown()


def threaded(servicer: Any, service: Any, pool: futures.ThreadPoolExecutor,
             route: Callable[[str, Any], futures.Executor | None] | None = None) -> Any:
    """An asyncio servicer whose methods run ``servicer``'s blocking ones in ``pool``: how a service
    written against blocking clients (the auth service: bcrypt, a blocking Redis client) runs on
    the same asyncio server, interceptor and bootstrap as the others. Only unary methods.
    ``route(method name, request)`` may name another pool for a call (the auth service's password
    checks, so that a storm of them never queues the quick calls behind it)."""
    adapter = type(f"Threaded{type(servicer).__name__}", (), {})()
    for method in service.methods:
        blocking = getattr(servicer, method.name)

        def call(blocking: Callable[..., Any] = blocking, name: str = method.name) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                # In the caller's context: the request id and the current span go with the call.
                call = contextvars.copy_context().run
                chosen = (route(name, request) if route is not None else None) or pool
                return await asyncio.get_running_loop().run_in_executor(chosen, call, blocking, request, context)
            return run
        setattr(adapter, method.name, call())
    return adapter
