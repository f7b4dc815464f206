"""Reading what a client sent: request bodies in bounded pieces (or whole, when small) and the
``?digest=`` argument. Memory stays flat however many bodies are in flight (see BodyPieces)."""

from __future__ import annotations

import collections
import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from typing import IO, Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from services.api.wire import SocketBody, body_unreader, why_unreadable
from services.common import digests
from services.common.errors import BLOB_UPLOAD_INVALID, DIGEST_INVALID, SIZE_INVALID, ErrorCode, RegistryError

# Bytes per read from a request body and per streamed response chunk.
IO_CHUNK = 1024 * 1024

# Pieces read ahead of the gRPC stream; bounds the memory an upload holds in the gateway.
READ_AHEAD = 4
_POLL = 0.5
# Bytes the request bodies a worker reads at once may hold. A body's pieces and read-ahead
# shrink as more bodies are in flight (from 1 MiB pieces 4 deep down to MIN_PIECE 1 deep), and
# past the budget a body of known length waits for its turn rather than reading more
# (BodyBudget): memory stays flat whether one client pushes fast or thousands push slowly.
BODY_BUDGET = 48 * 1024 * 1024
MIN_PIECE = 64 * 1024
_bodies_in_flight = 0


class BodyBudget:
    """A worker's bytes for request-body pieces, handed out first come, first served.

    A body of known length waits for a share of what is already in the kernel once its piece is
    there (wire.SocketBody.wait_ready), reads the piece, counts what came meanwhile without
    waiting, and gives it all back once the gRPC stream has taken the piece on (or the body
    ends). A body thus waits for the budget only for bytes it already has, never for a client,
    and a client holds no more of it than it sent: slow or silent clients cannot hold it and
    stall the others. Bodies whose pieces fill as bytes come (chunked framing, TLS) take no
    share, for that reason: their pieces are bounded by _piece_plan alone. Waiters are served
    in order, so a large piece is not passed over forever by small ones."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._lock = threading.Lock()
        self._waiting: collections.deque[tuple[int, threading.Event]] = collections.deque()

    def take(self, size: int, stop: threading.Event) -> int:
        """Takes ``size`` bytes (at most the whole budget), waiting for them; 0 when ``stop`` is set first."""
        size = min(size, self.total)
        with self._lock:
            if not self._waiting and self._free >= size:
                self._free -= size
                return size
            turn = (size, threading.Event())
            self._waiting.append(turn)
        while not turn[1].wait(_POLL):
            if stop.is_set():
                with self._lock:
                    if not turn[1].is_set():
                        self._waiting.remove(turn)
                        self._serve()
                        return 0
                self.give(size)  # served just as it was given up
                return 0
        return size

    def charge(self, size: int) -> int:
        """Counts ``size`` bytes taken without waiting (they already arrived); returns it."""
        with self._lock:
            self._free -= size
        return size

    def give(self, size: int) -> None:
        if size:
            with self._lock:
                self._free += size
                self._serve()

    def _serve(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._free:
            size, turn = self._waiting.popleft()
            self._free -= size
            turn.set()


_BUDGET = BodyBudget(BODY_BUDGET)


def _piece_plan() -> tuple[int, int]:
    """(piece size, read-ahead depth) for a body's next read, from the bodies in flight now: taken
    before every read, so bodies that start together do not each plan for being alone."""
    active = max(1, _bodies_in_flight)
    depth = READ_AHEAD if active <= 8 else 1
    piece = BODY_BUDGET // (active * (depth + 2))
    return max(MIN_PIECE, min(IO_CHUNK, piece - piece % MIN_PIECE)), depth


def cut_short(received: int, declared: int) -> RegistryError:
    """The refusal of a body that ended before its Content-Length (the client went away)."""
    return RegistryError(SIZE_INVALID, f"received {received} bytes, Content-Length said {declared}")


class BodyPieces:
    """The request body as an iterator of bounded pieces, never whole in memory.

    A thread reads the HTTP body while the gRPC stream sends what was already
    read, so receiving and forwarding overlap instead of alternating. A body
    shorter than its Content-Length (a dropped connection) raises before the
    last piece is handed on, so a single-request upload is never committed.
    :meth:`close` stops the reader before the response is sent: only one
    thread may touch the connection then. A reader failure is kept on the object as
    well as queued, so the consumer sees it even when the queue is full, and a reader
    that is still blocked on a silent client when the request ends has the socket's
    read side shut under it rather than being waited for.
    """

    def __init__(self, stream: IO[bytes] | SocketBody, declared: int | None, sock: socket.socket | None = None,
                 unreader: Any = None) -> None:
        self._stream = stream
        self._sock = sock
        # gunicorn's socket reader for this body (wire.body_unreader); it reads ahead up to 1 MiB
        # per recv and keeps the surplus, so its cap follows the piece size too.
        self._unreader = unreader
        self._failure: BaseException | None = None
        self._declared = declared
        self._received = 0
        global _bodies_in_flight
        _bodies_in_flight += 1
        self._counted = True
        # At most READ_AHEAD deep; _wait_for_room keeps it shallower while many bodies are in flight.
        self._pieces: queue.Queue[bytes | bytearray | BaseException | None] = queue.Queue(maxsize=READ_AHEAD)
        self._room = threading.Event()
        self._stop = threading.Event()
        self._done = False
        # Budget bytes this body holds (read pieces not yet taken on by the gRPC stream), and the
        # size of the piece the consumer has now.
        self._owed = 0
        self._owed_lock = threading.Lock()
        self._handed = 0
        self._reader = threading.Thread(target=self._read, daemon=True, name="body-reader")
        self._reader.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                piece, depth = _piece_plan()
                if self._unreader is not None:
                    self._unreader.max_body_chunk = piece
                self._wait_for_room(depth)
                wait_ready = getattr(self._stream, "wait_ready", None)
                ready = wait_ready(piece) if wait_ready is not None else None
                if self._stop.is_set():
                    return
                taken = 0
                if ready is not None:
                    # A share for what is already there: a client that sent little (or made the
                    # kernel wake the reader early, then went silent) can hold little of it.
                    taken = self._owe(_BUDGET.take(max(1, ready), self._stop))
                    if not taken:
                        return
                item = self._stream.read(piece) or None
                got = len(item) if item else 0
                if got > taken and ready is not None:
                    self._owe(_BUDGET.charge(got - taken))  # what came during the read
                elif taken > got:
                    self._settle(taken - got)
                while not self._stop.is_set():
                    try:
                        self._pieces.put(item, timeout=_POLL)
                        break
                    except queue.Full:
                        continue
                if item is None:
                    return
        except BaseException as exc:
            self._failure = exc
            with contextlib.suppress(queue.Full):
                self._pieces.put_nowait(exc)
        finally:
            if self._stop.is_set():
                self._settle()  # closed while reading: close() may have settled before this read

    def _owe(self, taken: int) -> int:
        with self._owed_lock:
            self._owed += taken
        return taken

    def _settle(self, size: int | None = None) -> None:
        """Gives ``size`` bytes of this body's share back to the worker's budget (all of it when None)."""
        with self._owed_lock:
            size = self._owed if size is None else min(size, self._owed)
            self._owed -= size
        _BUDGET.give(size)

    def _wait_for_room(self, depth: int) -> None:
        """Until fewer than ``depth`` pieces wait for the consumer (or the body is closed)."""
        while not self._stop.is_set():
            self._room.clear()
            if self._pieces.qsize() < depth:
                return
            self._room.wait(_POLL)

    def __iter__(self) -> Iterator[bytes | bytearray]:
        return self

    def __next__(self) -> bytes | bytearray:
        # Asked for the next piece, the gRPC stream has sent the last one on.
        self._settle(self._handed)
        self._handed = 0
        while not self._done:
            if self._stop.is_set():
                raise StopIteration
            try:
                item = self._pieces.get(timeout=_POLL)
                self._room.set()
            except queue.Empty:
                if self._failure is not None:
                    item = self._failure
                elif not self._reader.is_alive() and self._pieces.empty():
                    item = RegistryError(BLOB_UPLOAD_INVALID, "the request body could not be read")
                else:
                    continue
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if item is None:
                self._done = True
                if self._declared is not None and self._received != self._declared:
                    raise cut_short(self._received, self._declared)
                raise StopIteration
            self._received += len(item)
            self._handed = len(item)
            return item
        raise StopIteration

    def close(self) -> None:
        global _bodies_in_flight
        if self._counted:
            self._counted = False
            _bodies_in_flight -= 1
        self._stop.set()
        self._reader.join(_POLL * 2)
        if self._reader.is_alive() and self._sock is not None:
            # Blocked in a read from a client that sends nothing: end that read, so that no
            # thread is left reading the connection (the response then closes it).
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
            self._reader.join(_POLL * 2)
        self._settle()  # the pieces nobody will take on (a reader still running settles its own)


@contextlib.contextmanager
def request_body() -> Iterator[BodyPieces]:
    """The request's body in pieces: a body of known length straight off the connection under
    gunicorn (wire.SocketBody), any other (chunked, another server) through ``request.stream``."""
    environ = request.environ
    direct = SocketBody.of(environ)
    body = BodyPieces(direct or request.stream, request.content_length, environ.get("gunicorn.socket"),
                      None if direct else body_unreader(environ))
    try:
        yield body
    finally:
        body.close()


# The largest urlencoded form taken (/token's OAuth2 form, the web UI's posts): a few fields.
FORM_MAX = 64 * 1024


def read_form(limit: int = FORM_MAX) -> None:
    """Reads a form post's body into the request's cache (where the form is parsed from, by the
    view and then by the audit hook), only up to ``limit``: a longer Content-Length is refused
    before a byte is read, and a chunked body once it runs past the bound (werkzeug's
    RequestEntityTooLarge). Read by ``request.form`` unbounded, one anonymous 900 MB /token post
    took a gateway worker to 3.6 GB."""
    request.max_content_length = limit + 1
    if len(request.get_data(cache=True)) > limit:
        raise RequestEntityTooLarge()


# Bodies up to SMALL_BODY with a Content-Length are read whole and sent to the blob store in
# one unary call, which costs a fraction of a stream (measured: a 64 KiB PUT 10 -> 6 ms). What
# such bodies hold at once in a worker is bounded by SMALL_BODY_BUDGET; past it they stream.
SMALL_BODY = 1024 * 1024
SMALL_BODY_BUDGET = 16 * 1024 * 1024
_small_bytes = 0


@contextlib.contextmanager
def small_body() -> Iterator[bytes | None]:
    """The whole body when it is small and the worker's budget has room for it, else None (the
    caller streams it). A body that ends early or stops arriving fails as a streamed one does."""
    global _small_bytes
    length = request.content_length
    if length is None or length > SMALL_BODY or _small_bytes + length > SMALL_BODY_BUDGET \
            or request.headers.get("Transfer-Encoding"):
        yield None
        return
    _small_bytes += length
    try:
        parts: list[bytes] = []
        received = 0
        try:
            while received < length and (data := request.stream.read(length - received)):
                parts.append(data)
                received += len(data)
        except Exception as exc:
            raise RegistryError(BLOB_UPLOAD_INVALID, why_unreadable(exc)) from None
        if received != length:
            raise cut_short(received, length)
        yield b"".join(parts)
    finally:
        _small_bytes -= length


def read_body(limit: int, unreadable: ErrorCode) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``. A body that cannot be read (a
    malformed chunk, a client gone or silent for the idle timeout) or ends before its
    Content-Length is refused with ``unreadable`` (the endpoint's code) or SIZE_INVALID."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    parts: list[bytes] = []
    received = 0
    stream = request.stream
    try:
        while received <= limit:
            data = stream.read(min(IO_CHUNK, limit + 1 - received))
            if not data:
                break
            parts.append(data)
            received += len(data)
    except Exception as exc:
        raise RegistryError(unreadable, why_unreadable(exc)) from None
    if received > limit:
        return None
    if length is not None and received != length:
        raise cut_short(received, length)
    return b"".join(parts)


def bounded_int(digits: str, cap: int) -> int:
    """A run of ASCII digits as a number, ``cap`` when it is larger. Python refuses to convert more
    than 4,300 digits (a ``Range`` or ``Content-Range`` of 5,000 digits was a 500), and no
    offset or length here reaches past int64 anyway."""
    digits = digits.lstrip("0")
    return cap if len(digits) > len(str(cap)) else min(int(digits or "0"), cap)


def _entity_tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",")]


def not_modified(etag: str) -> bool:
    """Whether the request's If-None-Match names ``etag`` (or is "*"): the client holds these
    bytes, and a GET or HEAD is answered 304 (RFC 9110, 13.1.2; weak comparison)."""
    header = request.headers.get("If-None-Match")
    return header is not None and any(tag == "*" or tag.removeprefix("W/") == etag for tag in _entity_tags(header))


def range_applies(etag: str) -> bool:
    """Whether a Range is to be honoured: without If-Range, or with one that is ``etag`` itself
    (strong comparison). A date or another tag asks for the whole content (RFC 9110, 13.1.5)."""
    header = request.headers.get("If-Range")
    return header is None or header.strip() == etag


def digest_arg(name: str = "digest") -> str:
    value = request.args.get(name, "")
    if not value:
        raise RegistryError(DIGEST_INVALID, f"the {name} query parameter is required")
    return digests.validate(value)
