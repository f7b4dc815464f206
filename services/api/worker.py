"""The gateway's gunicorn worker: gevent, so that thousands of slow clients cost greenlets, not threads.

Why gevent (measured against gthread, see services/api/README.md "Server model"): a
gthread worker serves as many requests at once as it has threads, so 33 slowloris
connections stalled the registry; a gevent worker holds each connection in a greenlet of
a few kilobytes and serves the others while one waits. What gevent alone gets wrong for a
registry, and this worker puts right:

- **gRPC**: grpcio must be told to cooperate with gevent (``init_gevent``) after the
  monkey-patching and before the first channel; the gateway opens its channels lazily in
  each worker, after this point.
- **sendfile**: gevent's ``socket.sendfile`` falls back to 8 KiB read/send loops, which
  would cost pulls their figure; here it is a loop of real ``os.sendfile`` calls on the
  non-blocking socket that yields to the hub when the client's window is full.
- **time limits**: a request head must arrive within ``WHARF_HEADER_TIMEOUT`` of its first
  byte (gunicorn's async workers have no header timeout of their own), and a TLS handshake
  within the same time of the connection's accept (gevent's server otherwise shakes hands
  with no time limit at all, before any of gunicorn's code runs); an idle keep-alive
  connection lasts ``WHARF_KEEPALIVE_TIMEOUT``; any read or write that makes no progress
  for ``WHARF_IDLE_TIMEOUT`` ends the request.
- **100 Continue** is sent when the application first waits for the body, not by gunicorn
  before the application has seen the request (wire.defer_continue).
- **accepting**: a worker's share of the connections waiting (up to ACCEPT_BATCH) per turn of
  the loop, not gunicorn's one (``_BatchAcceptingServer``), so a burst of clients is not
  queued in the kernel for seconds.
- **open files**: the soft limit is raised to the hard one (by main, before the workers fork
  and inherit it), since every connection is a file descriptor and many systems default to
  1,024.
"""

from __future__ import annotations

import contextlib
import ctypes
import email.utils
import functools
import gc
import os
import resource
import socket
import ssl
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

import gevent
import gunicorn.http
import gunicorn.http.wsgi
import gunicorn.util
import gunicorn.workers.ggevent
from gevent.server import StreamServer
from gevent.socket import socket as _GeventSocket
from gevent.socket import wait_read, wait_write
from greenlet import getcurrent
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.errors import InvalidHeader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.ggevent import GeventWorker

from services.api.http_metrics import HttpMetrics
from services.api.metrics_hub import MetricsHub
from services.api.parking import PARK_AFTER, ParkingLot, keep, release
from services.api.quick_heads import DRAIN_LIMIT, QuickParser, QuickRequest
from services.api.wire import continue_before_waiting, continue_pending, defer_continue, disarm_continue
from services.common import metrics, tracing

# Bytes per os.sendfile call. Small calls let the receiver copy each piece while the next is
# queued, instead of waiting behind one long send that holds the socket. 1 GiB pulls over
# loopback, four per size: 16-48 KiB 1.7-2.8 GB/s (32 KiB: median ~2.1), 64 KiB 0.9-1.4,
# 128-256 KiB 1.5-2.2, 1 MiB 1.6-1.8, 4 MiB (before) 1.4-2.0; Distribution v3.0.0, writing
# 32 KiB at a time, 1.6-1.9. The gateway's CPU per pull fell too (0.4-0.6 s against 0.5-0.8).
SENDFILE_CHUNK = 32 * 1024
# How long a connection closed with a request body still arriving waits for the client to read
# the answer before it is closed for good (GatewayWorker._handle_request).
LINGER_SECONDS = 2.0
# The most connections a worker accepts per turn of its event loop (_BatchAcceptingServer).
ACCEPT_BATCH = 64


def listen_queue(sock: socket.socket) -> int | None:
    """How many connections wait in a listening TCP socket's accept queue (Linux reports it in
    ``tcpi_unacked`` for a listener), or None where that cannot be read."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except (OSError, AttributeError):
        return None
    return int.from_bytes(info[24:28], sys.byteorder) if len(info) >= 28 else None


class _BatchAcceptingServer(StreamServer):  # type: ignore[misc]
    """gevent's server, accepting per turn of the loop this worker's share of the connections
    waiting, up to ACCEPT_BATCH.

    gunicorn sets ``max_accept = 1`` on its gevent servers whenever there is more than one
    worker (to spread connections between them), so a busy worker took one new connection per
    turn of its loop. When 500 clients connected at once (bench/load_bench.py (b)) a turn took
    50-250 ms and a new connection waited in the kernel's listen queue for 2.4-4.7 s: the
    manifest probe's worst case. Measured in (b), two runs each: a batch of 1 gave probe max
    3.2-3.9 s and 22.3-22.7 s in all; 16, 1.0-1.2 s and 22.7-23.3 s; 64, 0.55-0.57 s and
    21.2-21.3 s. But a fixed batch lets the first worker to wake take a whole burst of
    keep-alive connections: 32 opened at once (``wrk -c32``) all went to one worker, and `GET
    /v2/` ran at half the rate. So each worker takes its share of what waits (the queue's length
    over the number of workers, rounded up), and both are woken for the shared socket."""

    workers = 1  # gunicorn's worker count, set by GatewayWorker.patch
    # This worker's parked connections (set by GatewayWorker.patch): the room a new connection
    # is given when the pool is full (_full, do_handle).
    lot: ClassVar[ParkingLot | None] = None
    # This worker's servers by their listening socket's descriptor.
    by_listener: ClassVar[dict[int, _BatchAcceptingServer]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        listener = getattr(self, "socket", None)  # None until start() when given an address
        if listener is not None:
            self.by_listener[listener.fileno()] = self
            # What a connection served again after parking is given as its listener: gunicorn asks
            # it for its name, and a stopping worker has closed the socket itself by then.
            self.named_listener = _NamedListener(listener.getsockname())
        if self.pool is not None:
            self.full = self._full  # gevent's set_spawn made the pool's own full() the instance's
        if self.ssl_args is not None:
            # gevent's server would complete each TLS handshake inside the wrap, with the new
            # socket's timeout (none): a client that connects and sends nothing, or a byte of
            # its ClientHello now and then, held its connection for good. The handshake is the
            # worker's instead, under the header timeout (GatewayWorker.handle).
            self.ssl_args["do_handshake_on_connect"] = False

    def _full(self) -> bool:
        """Whether the pool's semaphore is taken: by its greenlets, and by the connections parked
        (parking.py), each holding a slot of it, and no parked connection can give its slot to a
        new one (do_handle). Full is when the semaphore is, so that gevent's accept loop, which
        waits on the semaphore to accept again, is woken exactly when a slot is given back (by a
        greenlet's end or a parked connection's).

        Why parked connections give way: with every slot held (WHARF_WORKER_CONNECTIONS, 10,000
        per worker), a new connection waited in the kernel's listen queue until an old one
        closed. Twice load_bench's (d), 20,000 idle keep-alive connections on two workers, kept
        the manifest probe waiting up to 26 s; anyone able to open that many connections and
        leave them idle could keep new clients out for the keep-alive timeout, again and again."""
        return bool(self.pool._semaphore.locked()) and not self.lot

    def do_handle(self, *args: Any) -> None:
        """A new connection: when every slot is held, the connection parked longest is closed to
        give it one (``_full`` let it be accepted only if there was one to close; a parked
        connection's slot is given back at once, so the pool's spawn finds it free)."""
        lot = self.lot
        if self.pool is None or not self.pool._semaphore.locked():
            super().do_handle(*args)
            return
        if lot and lot.close_oldest():
            metrics.HTTP_IDLE_CLOSED.inc(())
        if self.pool._semaphore.locked():
            # Not reached (``_full``); a spawn would block the hub, so the connection is closed,
            # as a client of a full worker whose listen queue overflows would see.
            self.do_close(*args)
            return
        super().do_handle(*args)

    @property  # type: ignore[override]
    def max_accept(self) -> int:
        listener = getattr(self, "socket", None)
        waiting = listen_queue(listener) if listener is not None else None
        if waiting is None:
            return ACCEPT_BATCH
        return max(1, min(ACCEPT_BATCH, -(-waiting // max(1, self.workers))))

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        """gunicorn's 1 is ignored (see the class)."""


# The head deadline of the connection each greenlet serves (greenlet-local state, without
# gevent.local's cost on every request).
_deadlines: dict[Any, _RequestHeadDeadline] = {}


def raise_open_file_limit() -> int:
    """Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listen_backlog(configured: int, somaxconn: str = "/proc/sys/net/core/somaxconn") -> int:
    """The listen queue to ask for: ``configured``, or (0) the kernel's cap, which it would apply to
    any larger request anyway. gunicorn's default of 2048 is half of Linux's default cap: when
    thousands of clients connect at once (a node pool scaling up, 20,000 keep-alive connections
    opened together), connections beyond the queue are dropped and retried by their clients a
    second or more later, so a queue the size the kernel allows absorbs twice the burst."""
    if configured > 0:
        return configured
    try:
        with open(somaxconn) as cap:
            return max(int(cap.read().strip()), 2048)
    except (OSError, ValueError):
        return 4096


def cooperative_sendfile(sock: Any, file: Any, offset: int = 0, count: int | None = None) -> int:
    """``socket.sendfile`` for gevent sockets: zero-copy os.sendfile, waiting in the hub on EAGAIN.

    A client that takes no byte for the socket's timeout gets ``TimeoutError``.
    """
    out_fd, in_fd = sock.fileno(), file.fileno()
    timeout = sock.gettimeout()
    total = 0
    try:
        while count is None or total < count:
            size = SENDFILE_CHUNK if count is None else min(SENDFILE_CHUNK, count - total)
            try:
                sent = os.sendfile(out_fd, in_fd, offset + total, size)
            except BlockingIOError:
                wait_write(out_fd, timeout=timeout, timeout_exc=TimeoutError("client stopped reading"))
                continue
            if sent == 0:
                break
            total += sent
    finally:
        if total and hasattr(file, "seek"):
            file.seek(offset + total)
    return total


_date = (0, "")


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's Date header, formatted once per second instead of once per response."""
    global _date
    if timestamp is not None:
        return email.utils.formatdate(timestamp, usegmt=True)
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def _quick_parser_seen_by_deadline(get_parser: Callable[..., Any]) -> Callable[..., Any]:
    """gunicorn's parser factory, making HTTP/1 parsers that take the hot reads' heads themselves
    (quick_heads.py) and telling the connection's head deadline about the parser's reader."""
    def made(cfg: Any, source: Any, source_addr: Any, http2_connection: bool = False) -> Any:
        if http2_connection or getattr(cfg, "protocol", "http") != "http":
            parser = get_parser(cfg, source, source_addr, http2_connection)
        else:
            parser = QuickParser(cfg, source, source_addr)
        deadline = _deadlines.get(getcurrent())
        if deadline is not None:
            deadline.unreader = getattr(parser, "unreader", None)
            deadline.parser = parser
        return parser
    return made


def _environ_of(req: Any, addr: Any) -> dict[str, Any]:
    """What the hot-read path reads of a request, as gunicorn's environ would say it (headers
    joined with "," when repeated)."""
    environ: dict[str, Any] = {"REQUEST_METHOD": req.method, "PATH_INFO": req.path, "RAW_URI": req.uri,
                               "REMOTE_ADDR": addr[0] if isinstance(addr, tuple) else ""}
    for name, value in req.headers:
        key = name.replace("-", "_")
        key = key if key in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _send(sock: Any, data: bytes) -> None:
    """``sendall`` for a small answer: one send on the plain socket underneath when it takes it
    all (as it nearly always does), without gevent's per-call socket-option lookup. What is left
    after a partial send is a view, not a copy: a slow reader of a large answer then holds no
    bytes of its own while it reads."""
    if type(sock) is _GeventSocket:
        try:
            sent = sock._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        sock.sendall(memoryview(data)[sent:])
        return
    sock.sendall(data)


# A body chunk up to this size leaves in one send with the response's head (it is copied once to
# join it); a larger one follows the head in a send of its own.
COALESCED_BODY = 64 * 1024


class CoalescedResponse(gunicorn.http.wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, whose head waits to leave with the first piece of the body.

    gunicorn sends a response's head and its body in separate writes, so a small answer (a
    manifest, an error) took two segments and woke the client twice. Corking the socket for
    every request fixed that but cost two ``setsockopt`` calls a request, each holding the GIL
    while the kernel pushed the segment through loopback (a tenth of a small push's gateway
    samples in py-spy), and held the answer until gunicorn's work after the response was done
    (a ``POST`` on one connection: p50 1.9 ms corked, 0.85 ms now). Here the head is kept once
    gunicorn commits to it (``headers_sent``, which gunicorn's error handling reads, means
    "committed": a head kept and never sent ends as one sent and then abandoned does, with the
    connection closed) and goes out with the first body chunk, or on its own before a file, a
    chunked body or the response's end."""

    _head = b""
    headers_sent: bool

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        tosend = self.default_headers()
        tosend.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._head = f"{''.join(tosend)}\r\n".encode("latin-1")
        self.headers_sent = True

    def _flush_head(self) -> None:
        head, self._head = self._head, b""
        if head:
            _send(self.sock, head)

    def _emit_body(self, data: bytes) -> None:
        if self._head and not self.chunked and len(data) <= COALESCED_BODY:
            head, self._head = self._head, b""
            _send(self.sock, head + data)
            return
        self._flush_head()
        super()._emit_body(data)

    def sendfile(self, respiter: Any) -> bool:
        self.send_headers()
        self._flush_head()
        return bool(super().sendfile(respiter))

    def close(self) -> None:
        self.send_headers()
        self._flush_head()
        super().close()

    def should_close(self) -> bool:
        """gunicorn's answer, and also when the application left more of the request's body
        unread than the parser drains before the next request (``DRAIN_LIMIT``): the answer
        says ``Connection: close`` rather than promising a connection it will drop."""
        return bool(super().should_close()) or body_left_over(self.req)


def body_left_over(req: Any) -> bool:
    """True when the request's body cannot be discarded within ``DRAIN_LIMIT``: a declared length
    that much beyond what was read, a chunked body not read to its end, or a body whose reading
    failed (where the next request would start is unknown)."""
    body = getattr(req, "body", None)
    if body is None:
        return False
    if getattr(body, "failed", False) is True:
        return True
    # A client still waiting for 100 Continue may never send what is left: nothing to drain.
    return _body_unread(req, 0 if continue_pending(getattr(req, "unreader", None)) else DRAIN_LIMIT)


def _body_unread(req: Any, beyond: int = 0) -> bool:
    """Whether more than ``beyond`` bytes of ``req``'s body are still to come off the connection
    (a chunked body not read to its end: always). gunicorn reads past what is left before the
    next request, with the parser a parked connection gives up: such a connection is not parked
    (its leftover body would be read as a request)."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    if isinstance(reader, LengthReader):
        return int(reader.length) > beyond
    return isinstance(reader, ChunkedReader) and reader.parser is not None


def _tls_pending(client: Any) -> bool:
    """Whether a TLS connection holds decrypted bytes not read yet (the kernel no longer has them)."""
    pending = getattr(client, "pending", None)
    try:
        return pending is not None and bool(pending())
    except (OSError, ValueError):
        return True


def _input_waiting(client: Any) -> bool:
    """True when the connection already has bytes (or its end) to read: one non-blocking peek,
    so a busy keep-alive connection skips the idle wait (its watcher and timeout). A TLS socket
    may hold decrypted bytes the kernel no longer has: those count too."""
    if _tls_pending(client):
        return True
    try:
        client._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except (OSError, AttributeError):
        pass  # an error is the parser's to report
    return True


class _NamedListener:
    """What gunicorn's loop asks of the listening socket (its name), for a connection served again
    after it was parked."""

    __slots__ = ("_name",)

    def __init__(self, name: Any) -> None:
        self._name = name

    def getsockname(self) -> Any:
        return self._name


class _RequestHeadDeadline:
    """What gunicorn's keep-alive loop runs ``next(parser)`` under: first an idle wait of up to
    the keep-alive timeout for the request's first byte (an idle connection is cheap and left
    alone that long), then the header timeout for the whole head. Either expiry closes the
    connection quietly, as gunicorn's own keep-alive timeout does. One per connection, re-armed
    for every request on it (a timer per request costs a busy connection measurably)."""

    def __init__(self, client: socket.socket, keepalive: float, header_timeout: float,
                 may_park: Callable[[], bool] | None = None) -> None:
        self._client = client
        self._keepalive = keepalive
        self._timeout = gevent.Timeout(header_timeout, False)
        # gunicorn's reader of this connection (set when its parser is made): bytes it already
        # holds are a request waiting too (a pipelined one), though the socket has none.
        self.unreader: Any = None
        # The connection's parser (set with the reader): the last request's body may be unread.
        self.parser: Any = None
        # Whether the connection may be parked now (parking.py); None: never.
        self._may_park = may_park if keepalive > PARK_AFTER else None
        # The connection, as parking.keep took it, once it is parked: gunicorn's loop has ended,
        # the connection has not (GatewayWorker._serve hands it to the parking lot).
        self.parked: Any = None
        # Request heads begun on the connection (in this greenlet): none, when it is parked before
        # its first request.
        self.heads = 0

    def _buffered(self) -> bool:
        buffer = getattr(self.unreader, "buf", None)
        return buffer is not None and bool(buffer.getbuffer().nbytes)

    def __enter__(self) -> None:
        if self._buffered() or _input_waiting(self._client):
            # The next request is already here. Served at once, a client that sends each request
            # as soon as it has the last answer kept the hub from running anyone else for as
            # long as it went on: under hey -c256, 1% of requests waited 0.3-1.9 s (p99 212-265
            # ms; Distribution 102 ms). Letting every other ready connection go first took p99
            # to ~90 ms (13 ms at -c32, was 22-40) for ~3-6% of blob HEAD throughput.
            gevent.sleep(0)
        elif not self._wait_for_input():
            # Parked: ends gunicorn's loop for the connection quietly, without closing it.
            self.parked = keep(self._client)
            raise StopIteration("idle: parked")
        self.heads += 1
        self._timeout.start()

    def _wait_for_input(self) -> bool:
        """Waits for the next request's first byte; False when the connection is to be parked
        instead (idle for PARK_AFTER, nothing buffered, and the worker has room for it)."""
        fd, waited = self._client.fileno(), 0.0
        try:
            if self._may_park is not None:
                try:
                    wait_read(fd, timeout=PARK_AFTER, timeout_exc=TimeoutError())
                    return True
                except TimeoutError:
                    if self._may_park() and not self._buffered() and not _tls_pending(self._client) \
                            and not _body_unread(getattr(self.parser, "mesg", None)):
                        return False
                    waited = PARK_AFTER
            wait_read(fd, timeout=self._keepalive - waited, timeout_exc=TimeoutError())
        except TimeoutError:
            # The parser then reads end-of-file and gunicorn closes the connection.
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        return True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._timeout.cancel()
        return exc is self._timeout  # our own expiry ends the connection quietly; nothing else is swallowed

    def close(self) -> None:
        self._timeout.close()


def handshake_within(client: ssl.SSLSocket, seconds: float) -> bool:
    """Completes the TLS handshake of a new connection within ``seconds`` of its accept; False
    when it failed or did not finish in time (the caller drops the connection quietly, as gunicorn
    drops one whose handshake fails). A handshake that trickles in, one byte per read, makes
    progress on every read, so only a deadline on the whole of it ends it."""
    with gevent.Timeout(seconds, False):
        try:
            client.do_handshake()
        except OSError:  # ssl.SSLError is one
            return False
        return True
    return False


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library: its heap is left as it is).

    Why: a burst of uploads leaves a worker's heap large and fragmented (their body pieces,
    gRPC messages), and glibc keeps the freed memory for reuse; the greenlets and buffers of the
    next burst (10,000 idle connections, load scenario (d) after (b)) did not fit in it and were
    added on top: a worker's peak reached 245-281 MB against the 300 MB target. Given back once
    the transfers end, the same run peaked at 147-154 MB (docs/performance.md). A trim of a
    fragmented 200 MB heap takes ~10 ms, once per burst."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


class GatewayWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with the fixes above. Its limits are class attributes, set by
    :func:`worker_class` from the settings main built (gunicorn instantiates the class itself)."""

    header_timeout = 30.0
    idle_timeout = 60.0
    grpc_threads = 1024
    metrics_hub: MetricsHub | None = None
    otlp_endpoint = ""
    _trim_due = False  # transfers ran since the heap was last trimmed

    def patch(self) -> None:
        super().patch()
        from grpc.experimental import gevent as grpc_gevent

        # grpcio's gevent mode waits for each call's completion in a thread of the hub's pool
        # (10 threads by default), checking for interruption every 2 s: with more calls in
        # flight than threads, a quick call queued behind slow streams waited 2-4 s.
        gevent.get_hub().threadpool.maxsize = self.grpc_threads
        grpc_gevent.init_gevent()
        from gevent import _socket3

        _socket3.socket.sendfile = cooperative_sendfile
        gunicorn.util.http_date = _http_date
        gunicorn.http.wsgi.Response = CoalescedResponse  # what gunicorn.http.wsgi.create() builds
        gunicorn.http.get_parser = _quick_parser_seen_by_deadline(gunicorn.http.get_parser)
        SocketUnreader.wharf_continue = None  # the socket a deferred 100 Continue goes to (defer_continue)
        SocketUnreader.chunk = continue_before_waiting(SocketUnreader.chunk)
        gunicorn.workers.ggevent.StreamServer = _BatchAcceptingServer  # what GeventWorker.run builds
        _BatchAcceptingServer.workers = self.cfg.workers
        _BatchAcceptingServer.lot = self._lot

    def run(self) -> None:
        """After the fork: this worker's traces, and its figures for the master (metrics_hub.py)."""
        tracing.configure("gateway", self.otlp_endpoint)
        if self.metrics_hub is not None:
            self._registry = metrics.registry_for("gateway")
            self.metrics_hub.serve_worker(self._registry)
        # What exists now (the application, its modules, gRPC's and protobuf's descriptors: ~60,000
        # objects) lives as long as the worker: kept out of the collector's full passes, which
        # otherwise walk it again each time (~20 ms here) while every connection waits, and which
        # would dirty the memory this worker still shares with the master.
        gc.freeze()
        try:
            super().run()
        finally:
            self._lot.close_all()

    def notify(self) -> None:
        """gunicorn's once-a-second heartbeat; here also where freed heap goes back to the system
        once the transfers that used it have ended (``_malloc_trim``)."""
        super().notify()
        if _TRIM is None:
            return
        busy = any(self._figures.transfers.values())
        if busy:
            self._trim_due = True
        elif self._trim_due:
            self._trim_due = False
            _TRIM(0)

    def _extension(self, name: str) -> Any:
        extensions = getattr(self.wsgi, "extensions", None)
        return extensions.get(name) if isinstance(extensions, dict) else None

    def _answer_hit(self, req: Any, sock: Any, addr: Any, started: float) -> bool | None:
        """A read-cache hit answered from the parsed request, without the WSGI environ and
        response objects (which cost as much as the rest of such a request); None when it is not one."""
        hot = self._extension("wharf.hot_reads")
        if hot is None or (req.method != "GET" and req.method != "HEAD") or "%" in req.path:
            return None
        hit = hot.respond(req.environ if type(req) is QuickRequest else _environ_of(req, addr))
        if hit is None:
            return None
        route, headers, body = hit
        self.nr += 1
        if self.nr >= self.max_requests:
            self.alive = False
        close = req.should_close() or not self.alive or not self.cfg.keepalive
        head = [f"HTTP/{req.version[0]}.{req.version[1]} 200 OK", "Server: gunicorn", f"Date: {_http_date()}",
                f"Connection: {'close' if close else 'keep-alive'}", *(f"{k}: {v}" for k, v in headers)]
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if len(body) > COALESCED_BODY:
            # A large body (a cached manifest) leaves as the cache holds it: joined to the head,
            # it was a copy per answer, held by a slow reader until it had read it all.
            _send(sock, head_bytes)
            _send(sock, body)
        else:
            _send(sock, head_bytes + body)
        self._figures.record(route, req.method, 200, time.perf_counter() - started, 0, len(body))
        if tracing.enabled():
            tracing.name_request(f"{req.method} {route}", {"http.route": route})
        if close:
            raise StopIteration()
        return True

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        req.wharf_started = started = time.perf_counter()
        if not tracing.enabled():
            return self._handle_request(listener_name, req, sock, addr, started)
        with tracing.span(f"{req.method}", tracing.SpanKind.SERVER, carrier=tracing.carrier_of(req.headers),
                          attributes={"http.request.method": req.method}):
            return self._handle_request(listener_name, req, sock, addr, started)

    def _handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any, started: float) -> bool:
        if req.version >= (1, 1) and ("HTTP_HOST" not in req.environ if type(req) is QuickRequest
                                      else all(name != "HOST" for name, _ in req.headers)):
            # RFC 9112, 3.2: an HTTP/1.1 request without Host gets 400 (gunicorn lets it through);
            # gunicorn's error answer follows, and the connection closes.
            raise InvalidHeader("HOST", req=req)
        answered = self._answer_hit(req, sock, addr, started)
        if answered is not None:
            return answered
        if type(req) is QuickRequest:
            req = req.parser.full_request(req)  # a miss: the application reads gunicorn's request
            req.wharf_started = started
        deferred = defer_continue(req, sock)
        try:
            return bool(super().handle_request(listener_name, req, sock, addr))
        except StopIteration:
            if type(sock) is _GeventSocket and body_left_over(req):
                # The answer went out with a body still arriving: closed at once, the unread bytes
                # make the kernel reset the connection, and a client may lose the answer (a 413,
                # a quota's DENIED) to the reset. Half-closed first, the client reads the answer
                # and its end; what it still sends is read past, up to the same limit, for up to
                # LINGER_SECONDS (RFC 9112, 9.6).
                gunicorn.util.close_graceful(sock, timeout=LINGER_SECONDS, max_drain=DRAIN_LIMIT)
            raise
        finally:
            if deferred:
                disarm_continue(req.unreader)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # Every read and write on the connection makes progress within this, or fails.
        client.settimeout(self.idle_timeout)
        if isinstance(client, ssl.SSLSocket) and not handshake_within(client, self.header_timeout):
            return  # the server closes the connection
        self._figures.connections += 1
        self._serve(listener, client, addr, _BatchAcceptingServer.by_listener.get(listener.fileno()))

    def _serve(self, listener: Any, client: Any, addr: Any, server: _BatchAcceptingServer | None) -> None:
        """gunicorn's loop over the connection's requests, from its first or from being parked."""
        may_park = functools.partial(self._may_park, server) if server is not None else None
        deadline = _deadlines[getcurrent()] = _RequestHeadDeadline(client, self.cfg.keepalive, self.header_timeout,
                                                                   may_park)
        try:
            super(GeventWorker, self).handle(listener, client, addr)
        finally:
            del _deadlines[getcurrent()]
            deadline.close()
            if deadline.parked is None:
                self._figures.connections -= 1
            else:
                self._park(deadline.parked, addr, server, served=deadline.heads > 0)

    def _may_park(self, server: _BatchAcceptingServer) -> bool:
        """Parking takes a slot of the server's pool (parking.py holds it): only while one is free."""
        return bool(self.alive) and not server.pool._semaphore.locked()

    def _park(self, kept: Any, addr: Any, server: _BatchAcceptingServer | None, served: bool) -> None:
        if server is None or not server.pool._semaphore.acquire(blocking=False):
            release(kept)  # not reached: _may_park said a slot was free, and nothing ran since
            self._figures.connections -= 1
            return
        self._lot.park(kept, self.cfg.keepalive - PARK_AFTER,
                       functools.partial(self._resume, server.named_listener, addr, server), server.pool._semaphore,
                       served)
        # gevent's accept loop stops when the pool is full and waits for a slot to be given back;
        # a parked connection can give its slot to a new one: accept again (no-op when accepting).
        server._start_accepting_if_started()

    def _resume(self, listener: Any, addr: Any, server: _BatchAcceptingServer, client: Any) -> None:
        """A parked connection's first byte arrived (in the hub): serve it in a greenlet of its
        server's pool (its slot was just given back), where a stopping worker waits for it."""
        client.settimeout(self.idle_timeout)  # a plain connection comes back as a new socket object
        spawn = server.pool.spawn if not server.pool._semaphore.locked() else gevent.spawn
        spawn(self._serve, listener, client, addr, server)

    def _parked_closed(self) -> None:
        self._figures.connections -= 1

    @functools.cached_property
    def _lot(self) -> ParkingLot:
        return ParkingLot(self._parked_closed)

    @functools.cached_property
    def _figures(self) -> HttpMetrics:
        return self._extension("wharf.http_metrics") or HttpMetrics()

    def timeout_ctx(self) -> _RequestHeadDeadline:
        return _deadlines[getcurrent()]  # gunicorn calls this in the greenlet that serves the connection


def worker_class(header_timeout: float, idle_timeout: float, metrics_hub: MetricsHub | None = None,
                 otlp_endpoint: str = "") -> type[GatewayWorker]:
    """The worker class gunicorn instantiates, with the gateway's limits and telemetry (gunicorn
    takes a class)."""
    return type("GatewayWorker", (GatewayWorker,), {"header_timeout": header_timeout, "idle_timeout": idle_timeout,
                                                    "metrics_hub": metrics_hub, "otlp_endpoint": otlp_endpoint})


def record_request(worker: GatewayWorker, req: Any, environ: dict[str, Any], resp: Any) -> None:
    """gunicorn's ``post_request`` hook: a request the application answered is counted once its
    answer has been sent (so a download's time and bytes are all of it)."""
    if resp is None or not resp.status_code:
        return
    tracing.end_request(resp.status_code)
    sent = resp.sent
    if not sent and req.method != "HEAD" and resp.headers_sent:
        sent = resp.response_length or 0  # gunicorn's sendfile path does not count what it sends
    worker._figures.end(environ, req.method, resp.status_code,
                        time.perf_counter() - getattr(req, "wharf_started", time.perf_counter()), sent)


def worker_exiting(server: Any, worker: GatewayWorker) -> None:
    """gunicorn's ``worker_exit`` hook: the worker's last figures go to the master."""
    registry = getattr(worker, "_registry", None)
    if worker.metrics_hub is not None and registry is not None:
        worker.metrics_hub.worker_exiting(registry)
