"""What the gateway changes in gunicorn's handling of the wire, before requests reach Flask.

- **JSON errors.** gunicorn answers a request it cannot parse (a non-ASCII request line, a
  malformed header) itself, with an HTML page. Clients of a registry expect the
  ``{"errors": [...]}`` form with a code from the spec's list, so the gateway replaces the
  function gunicorn writes those answers with. The attacker-supplied part of gunicorn's
  message is never echoed back, nor logged: the answer is counted with the other requests
  (route ``none``, method ``other``) and logged as an access line with the explanation the
  client was given (services/api/server_log.py keeps gunicorn's own line, which quotes the
  client's bytes, to debug level).
- **Chunk sizes.** gunicorn accepts any chunk size (2^64 included) and then waits for the
  bytes; a chunk that takes the body past the largest body the gateway accepts (alone, or
  with the chunks before it) is refused as soon as its size line is read, and so is a size
  line ended by a bare LF (which gunicorn waited on).
- **100 Continue** is sent when the application first waits for the body (``defer_continue``),
  not by gunicorn before the application has looked at the request: a refused upload (a bad
  name, no permission, no room in the quota) is answered before the client sends its body.
- **Bodies of known length** are read straight off the connection when streamed to the blob
  store (:class:`SocketBody`): on their way through gunicorn's readers, werkzeug's stream and
  the metrics' counter, a body's bytes were copied six to eight times.
"""

from __future__ import annotations

import fcntl
import json
import socket
import ssl
import sys
import termios
import time
from collections.abc import Callable
from typing import Any

import gunicorn.http.body
import gunicorn.http.unreader
import gunicorn.util
from gevent.socket import wait_read
from gunicorn.http.errors import InvalidChunkSize, NoMoreData, ParseException

from services.api.http_metrics import NO_ROUTE
from services.common import metrics
from services.common.logs import AccessLog

# By status: what was wrong, in the spec's terms.
_CODES = {400: "UNSUPPORTED", 403: "DENIED", 413: "SIZE_INVALID", 414: "NAME_INVALID", 431: "UNSUPPORTED",
          417: "UNSUPPORTED", 501: "UNSUPPORTED"}


# What gunicorn's message (which quotes the client's bytes, never echoed) says was wrong, by its
# start, first match wins: a fixed explanation a client's author can act on.
_EXPLAINED = (
    ("Invalid HTTP Header: 'CONTENT-LENGTH'", "Content-Length must be one decimal number, and not beside "
                                              "Transfer-Encoding"),
    ("Invalid HTTP Header: 'HOST'", "an HTTP/1.1 request needs one Host header"),
    ("Invalid HTTP Header: 'TRANSFER-ENCODING'", "Transfer-Encoding must end with chunked, once, and needs "
                                                 "HTTP/1.1"),
    ("Invalid HTTP Header", "a header field is malformed or repeated where it may not be"),
    ("Invalid HTTP header name", "a header name is malformed"),
    ("Obsolete line folding", "a header field is folded over several lines"),
    ("Invalid Request Line", "the request line is malformed (method, target or version), or the target is "
                             "not ASCII"),
    ("Invalid Method", "the method is malformed"),
    ("Invalid HTTP Version", "the HTTP version is not supported"),
    ("Unsupported transfer coding", "the transfer coding is not supported: send the body chunked or with a "
                                    "Content-Length"),
    ("Chunked body over the limit", "the chunks add up to more than the largest body accepted"),
    ("Invalid chunk size", "a chunk size is malformed"),
    ("Invalid chunk terminator", "a chunk does not end with CRLF"),
    ("Invalid chunk extension", "a chunk extension is malformed"),
    ("Request Line is too large", "the request line is too long"),
    ("Error parsing headers", "the header section is too large"),
    ("Contradictory scheme headers", "the forwarded-scheme headers contradict each other"),
    ("Unable to comply with expectation", "only Expect: 100-continue is supported"),
)


class ChunkedBodyTooLarge(InvalidChunkSize):  # type: ignore[misc]
    """A chunked body whose chunks, the one just announced included, add up to more than
    ``WHARF_MAX_BODY_BYTES`` (a Content-Length that large is refused before the body)."""

    def __init__(self, total: int, limit: int) -> None:
        super().__init__(f"{total} bytes, over the limit of {limit}".encode())

    def __str__(self) -> str:
        return f"Chunked body over the limit: {self.data.decode()}"


def _explain(mesg: str, reason: str) -> str:
    return next((said for start, said in _EXPLAINED if mesg.startswith(start)), reason.lower())


# What reading a request body through gunicorn raises when the client broke it: malformed
# framing, or the connection closed before the body's end.
UNREADABLE = (ParseException, NoMoreData)


def why_unreadable(exc: BaseException) -> str:
    """What a client is told when reading its request body failed with ``exc``."""
    if isinstance(exc, ParseException):
        return f"the request body could not be read: {_explain(str(exc), 'it is malformed')}"
    if isinstance(exc, TimeoutError):
        return "the request body could not be read: no byte of it arrived within the idle timeout"
    return "the request body could not be read"


# Where malformed requests are logged (install: None when access lines are off).
_access_log: AccessLog | None = None


def _write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    code = _CODES.get(status_int, "INTERNAL" if status_int >= 500 else "UNSUPPORTED")
    if status_int == 400 and mesg.startswith("Invalid Request Line") and "/v2/" in mesg:
        code = "NAME_INVALID"  # in practice, a repository name with bytes outside ASCII
    said = _explain(mesg, reason)
    body = json.dumps({"errors": [{"code": code, "message": f"malformed request: {said}"}]}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
    started = time.perf_counter()
    gunicorn.util.write_nonblock(sock, head + body)
    # Counted and timed like every answered request (the time is the answer's: the head's own
    # is not known here).
    metrics.HTTP_REQUESTS.inc((NO_ROUTE, "other", status_int))
    metrics.HTTP_DURATION.observe((NO_ROUTE, "other"), time.perf_counter() - started)
    if _access_log is not None:
        try:
            remote = str(sock.getpeername()[0])
        except (OSError, IndexError, TypeError):  # gone already, or a Unix socket's peer
            remote = ""
        # gunicorn answers with this an application error that escaped too (500), logged by it.
        _access_log.write("malformed request" if status_int < 500 else "request failed",
                          {"status": status_int, "error": said, "remote": remote})


def body_unreader(environ: dict[str, Any]) -> Any:
    """gunicorn's socket reader under a request body, whose ``max_body_chunk`` caps each recv(),
    or None (another server, or a gunicorn whose body has another shape)."""
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    unreader = getattr(reader, "unreader", None)
    return unreader if hasattr(unreader, "max_body_chunk") else None


class SocketBody:
    """The rest of a request body of known length, read off the connection into one buffer per
    piece: the kernel's copy is the only one before the gRPC message is framed (gunicorn's
    readers, werkzeug's limited stream and the byte counter each copied it once or twice more:
    a 1 GiB push cost the gateway 0.9 s of CPU, mostly copying).

    It consumes the body through gunicorn's own state, so what follows the request stays
    gunicorn's: first what its reader had buffered past the head, then the socket, never beyond
    the body's declared end (a pipelined request behind it stays unread), the body's remaining
    length kept current, and a failed read marks the body failed, as gunicorn's reader does
    (the connection is then not reused)."""

    def __init__(self, body: Any, sock: socket.socket, counter: Any) -> None:
        self._body = body
        self._reader = body.reader
        self._sock = sock
        self._counter = counter

    @classmethod
    def of(cls, environ: dict[str, Any]) -> SocketBody | None:
        """The body of this request when it has gunicorn's shape for a Content-Length body that
        nothing has read from yet; else None (the caller reads ``wsgi.input``)."""
        stream = environ.get("wsgi.input")
        body: Any = getattr(stream, "inner", stream)  # under the metrics' byte counter (CountingInput)
        reader: Any = getattr(body, "reader", None)
        sock = environ.get("gunicorn.socket")
        if type(reader) is not gunicorn.http.body.LengthReader or sock is None \
                or not isinstance(reader.unreader, gunicorn.http.unreader.SocketUnreader) \
                or body.buf.getbuffer().nbytes:
            return None
        return cls(body, sock, stream if stream is not body and hasattr(stream, "received") else None)

    def wait_ready(self, size: int) -> int | None:
        """Waits until a read of ``size`` bytes (or the rest of the body, if less) will not wait,
        and returns how many bytes can be read now without waiting: that many, or fewer when the
        kernel woke the reader early, or the client closed the connection or broke off (then
        the read finds the end at once). None where it cannot tell (TLS, whose records the
        kernel cannot count; not Linux): the read then waits for bytes as they come.

        A slow body's bytes thus gather in the kernel, not in a buffer of the worker's that a
        slow client would fill for seconds (500 uploads at 256 KiB/s each held a 64 KiB-1 MiB
        piece apiece), and the worker's share of the body budget is taken only for bytes that
        are already there (request_input.BodyPieces): a client that goes silent holds none of
        it. On Linux the socket is made readable only at that many bytes (SO_RCVLOWAT; the
        kernel grows the receive buffer to fit, and wakes the reader earlier when that buffer is
        nearly full, as it must then be read). The idle timeout still counts bytes, not pieces:
        it ends the wait only when no byte at all arrived within it."""
        want = min(size, self._reader.length)
        unreader = self._reader.unreader
        if _NO_LOW_MARK or isinstance(self._sock, ssl.SSLSocket):
            return None
        if want <= 0:
            return 0
        with unreader.buf.getbuffer() as held_view:
            held = held_view.nbytes
        if not held and continue_pending(unreader):
            send_pending_continue(unreader)  # the client waits for it before sending any
        sock = self._sock
        try:
            there = held + _in_receive_buffer(sock)
            if there < want and not held:
                there = self._wait_for(sock, want)
            # Nothing there after a wake: the client closed or broke off, and the read finds
            # that at once.
            return min(want, there) or want
        except BaseException:
            self._body.failed = True
            raise

    @staticmethod
    def _wait_for(sock: socket.socket, want: int) -> int:
        """Until ``want`` bytes are in ``sock``'s receive buffer (or it is readable for another
        reason); what is there then. TimeoutError when not a byte came within the socket's timeout."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
        try:
            seen = _in_receive_buffer(sock)
            while True:
                try:
                    wait_read(sock.fileno(), sock.gettimeout())
                    return _in_receive_buffer(sock)
                except TimeoutError:
                    now = _in_receive_buffer(sock)
                    if now == seen:
                        raise  # not a byte within the idle timeout
                    seen = now
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def read(self, size: int) -> bytearray:
        """Up to ``size`` bytes of the body, fewer only at its end (empty there) or when the
        client closed the connection early."""
        want = min(size, self._reader.length)
        if want <= 0:
            return bytearray()
        piece = bytearray(want)
        view = memoryview(piece)
        filled = 0
        unreader = self._reader.unreader
        try:
            held = unreader.take_buffered()
            if held:
                filled = min(len(held), want)
                view[:filled] = held[:filled]
                if len(held) > filled:
                    unreader.unread(held[filled:])
            if filled < want and getattr(unreader, "wharf_continue", None) is not None:
                send_pending_continue(unreader)  # the client waits for it (worker.defer_continue)
            while filled < want:
                got = self._sock.recv_into(view[filled:], want - filled)
                if not got:
                    break
                filled += got
        except BaseException:
            self._body.failed = True
            raise
        finally:
            view.release()
            self._reader.length -= filled
            if self._counter is not None:
                self._counter.received += filled
        if filled < want:
            del piece[filled:]
        return piece


_NO_LOW_MARK = not sys.platform.startswith("linux")


def _in_receive_buffer(sock: socket.socket) -> int:
    """Bytes the kernel holds for the connection, not yet read (FIONREAD)."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def defer_continue(req: Any, sock: Any) -> bool:
    """Takes a request's ``Expect: 100-continue`` from gunicorn (which answers it before the
    application has seen the request) and arms its connection's reader to send ``100 Continue``
    just before the first read that would wait for the body (SocketUnreader.chunk, SocketBody).
    True when armed: the caller disarms it once the request is answered (disarm_continue)."""
    unreader: Any = getattr(req, "unreader", None)
    if not getattr(req, "_expected_100_continue", False) or not hasattr(unreader, "wharf_continue"):
        return False
    req._expected_100_continue = False
    unreader.wharf_continue = sock
    return True


def continue_pending(unreader: Any) -> bool:
    return getattr(unreader, "wharf_continue", None) is not None


def send_pending_continue(unreader: Any) -> None:
    """Sends the armed ``100 Continue`` (once): the body is about to be waited for."""
    sock = unreader.wharf_continue
    if sock is not None:
        unreader.wharf_continue = None
        sock.sendall(_CONTINUE)


def disarm_continue(unreader: Any) -> None:
    """After the answer: a later read (the parser draining the body) must not send it."""
    unreader.wharf_continue = None


def continue_before_waiting(chunk: Callable[..., bytes]) -> Callable[..., bytes]:
    """gunicorn's socket read (``SocketUnreader.chunk``), sending an armed 100 Continue first."""
    if getattr(chunk, "wharf_continue", False):
        return chunk  # already this

    def waiting_chunk(self: Any, size_hint: int | None = None) -> bytes:
        if self.wharf_continue is not None:
            send_pending_continue(self)
        return chunk(self, size_hint)
    waiting_chunk.wharf_continue = True  # type: ignore[attr-defined]
    return waiting_chunk


def install(max_body_bytes: int, access_log: bool = True) -> None:
    """Applies both changes (checked, not assumed: the hooks must exist in this gunicorn);
    ``access_log``: malformed requests are logged (WHARF_ACCESS_LOG)."""
    if not callable(getattr(gunicorn.util, "write_error", None)):
        raise RuntimeError("gunicorn.util.write_error is gone: update services/api/wire.py")
    global _access_log
    _access_log = AccessLog("wharf.gateway") if access_log else None
    gunicorn.util.write_error = _write_error
    reader = gunicorn.http.body.ChunkedReader
    parse = reader.parse_chunk_size
    if getattr(parse, "wharf_limit", None) is not None:
        return

    def parse_chunk_size(self: Any, unreader: Any, data: Any = None) -> Any:
        # gunicorn looks for the line's CRLF and waits for more bytes until one comes: a size
        # line ended by a bare LF (RFC 9112 allows none in chunked framing) left the request
        # waiting for the idle timeout. It is refused as soon as the LF is read.
        line, searched = bytearray(data) if data else bytearray(), 0
        while (lf := line.find(b"\n", searched)) < 0 and len(line) <= self.limit_chunk_size_line:
            searched = len(line)
            self.read_into(unreader, line)
        if lf == 0 or (lf > 0 and line[lf - 1] != 0x0D):  # the line's first LF, without its CR
            raise InvalidChunkSize(b"bare LF ending a chunk size line")
        size, rest = parse(self, unreader, line)  # an overlong line: gunicorn's own refusal
        # The body so far, counted on its reader (one per request): checked per chunk alone, a
        # chunked body of any length passed the limit that refuses such a Content-Length.
        total = getattr(self, "wharf_total", 0) + size
        if total > max_body_bytes:
            raise ChunkedBodyTooLarge(total, max_body_bytes)
        self.wharf_total = total
        return size, rest
    parse_chunk_size.wharf_limit = max_body_bytes  # type: ignore[attr-defined]
    reader.parse_chunk_size = parse_chunk_size
