"""GET/HEAD/DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from flask import Response, request, stream_with_context

from services.api.request_input import IO_CHUNK, bounded_int, range_applies
from services.api.responses import empty, unchanged
from services.common import digests
from services.common.errors import BLOB_UNKNOWN, RANGE_INVALID, RegistryError

if TYPE_CHECKING:
    from services.api.context import Context

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)\Z")
_LARGEST = 2**63  # past any blob's size


def blob_headers(digest: str, size: int) -> dict[str, str]:
    """What every answer about a blob carries (the views and the hot-read path share it)."""
    return {"Docker-Content-Digest": digest, "ETag": f'"{digest}"', "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream", "Content-Length": str(size),
            "Cache-Control": "max-age=31536000"}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single satisfiable range; None for no Range; 416 otherwise."""
    if not header:
        return None
    found = _RANGE_RE.match(header.strip())
    if not found or (not found.group(1) and not found.group(2)):
        # Multi-range and malformed ranges are ignored, as RFC 9110 allows.
        return None
    first_s, last_s = found.groups()
    if first_s:
        first = bounded_int(first_s, _LARGEST)
        asked = bounded_int(last_s, _LARGEST) if last_s else size - 1
        if first >= size or asked < first:
            raise _unsatisfiable(size)
        last = min(asked, size - 1)
    else:
        suffix = bounded_int(last_s, _LARGEST)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        first, last = max(size - suffix, 0), size - 1
    return first, last


def _unsatisfiable(size: int) -> RegistryError:
    return RegistryError(RANGE_INVALID, headers={"Content-Range": f"bytes */{size}"})


def _resolve(ctx: Context, name: str, digest: str, fill: bool) -> tuple[str, int | None]:
    """(the repository the blob is served from, the size its link records). A blob a mirrored
    repository (or, for a name not stored here, the default upstream) does not link yet is
    filled from the upstream first: whole when ``fill``, else the size is None and the caller
    streams the fill itself. The repository differs from ``name`` for the default upstream's
    names, kept under its prefix."""
    try:
        return name, ctx.clients.cache.blob_size(name, digest)
    except RegistryError as err:
        target = ctx.mirror.read_route(name) if err.error is BLOB_UNKNOWN else None
        if target is None:
            raise
    kept, upstream, remote = target
    if kept != name:
        try:
            return kept, ctx.clients.cache.blob_size(kept, digest)
        except RegistryError as err:
            if err.error is not BLOB_UNKNOWN:
                raise
    if not fill:
        return kept, None
    ctx.mirror.fill_and_link(kept, digest, upstream, remote)
    return kept, ctx.clients.cache.blob_size(kept, digest)


def head(ctx: Context, name: str, digest: str) -> Response:
    digests.validate(digest)
    _, size = _resolve(ctx, name, digest, fill=True)
    assert size is not None
    headers = blob_headers(digest, size)
    cached = unchanged(headers)
    if cached is not None:
        return cached
    response = empty(200, headers)
    response.headers["Content-Length"] = str(size)
    return response


# What the downloads a gateway worker passes through its memory may hold at once: those streamed
# from the blob store, and files sent over TLS (where sendfile cannot be used). Each holds about
# two pieces (the one being sent to its client, the next one arriving), sized when it starts as
# its share of what the pieces of those in flight leave free, so 1,000 slow clients do not hold a
# full-sized piece each (with 1 MiB pieces and gRPC's windows growing, load_bench (a) through the
# blob store took a worker to 4.9 GB), nor do the first few to arrive in a burst, which took
# large pieces while the worker was still idle and kept them once their clients stalled.
DOWNLOAD_BUDGET = 32 * 1024 * 1024
MIN_DOWNLOAD_PIECE = 64 * 1024
_downloads = 0
_pieces = 0  # the sum of their pieces


class _Download:
    """A response body that passes through memory, counted from its creation to its close (the
    WSGI server closes it, sent or not); ``piece`` is the size it reads in."""

    def __init__(self) -> None:
        global _downloads, _pieces
        _downloads += 1
        each = max(0, DOWNLOAD_BUDGET // 2 - _pieces) // _downloads
        self.piece = max(MIN_DOWNLOAD_PIECE, min(IO_CHUNK, each - each % MIN_DOWNLOAD_PIECE))
        _pieces += self.piece
        self._first = b""
        self._rest: Iterator[bytes] = iter(())
        self._cancel: Callable[[], None] | None = None
        self._open = True

    def attach(self, first: bytes, rest: Iterator[bytes], cancel: Callable[[], None]) -> _Download:
        self._first, self._rest, self._cancel = first, rest, cancel
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        try:
            return next(self._rest)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        global _downloads, _pieces
        if self._open:
            self._open = False
            _downloads -= 1
            _pieces -= self.piece
            if self._cancel is not None:
                self._cancel()


def _file_response(path: str, first: int, length: int) -> Iterable[bytes]:
    handle = open(path, "rb")  # noqa: SIM115 - the WSGI server closes the wrapper
    handle.seek(first)
    wrapper = request.environ.get("wsgi.file_wrapper")
    if wrapper is not None and not isinstance(request.environ.get("gunicorn.socket"), ssl.SSLSocket):
        # gunicorn sends from the current offset for Content-Length bytes with sendfile().
        return wrapper(handle, IO_CHUNK)  # type: ignore[no-any-return]
    download = _Download()

    def chunks() -> Iterator[bytes]:
        remaining = length
        while remaining > 0 and (data := handle.read(min(download.piece, remaining))):
            remaining -= len(data)
            yield data
    return download.attach(b"", chunks(), handle.close)


# Where this worker last found each blob's file (digest -> path under WHARF_LOCAL_BLOB_ROOT), so
# that a blob pulled again is sent without asking the blob store: a small blob's GET (an image's
# config, pulled by every node) cost a Stat call as much as the rest of the request. A blob's
# file holds its digest's bytes wherever it is, so a path found stays right until the file is
# gone (garbage collection), and then the open fails and the blob store is asked again. Whether
# the client may read the blob was decided before, from the repository's link.
_KNOWN_FILES_MAX = 4096
_known_files: dict[str, str] = {}


def _known_file(digest: str, first: int, length: int) -> Iterable[bytes] | None:
    path = _known_files.get(digest)
    if path is None:
        return None
    try:
        return _file_response(path, first, length)
    except FileNotFoundError:
        _known_files.pop(digest, None)
        return None


def _remember_file(digest: str, path: str) -> None:
    if len(_known_files) >= _KNOWN_FILES_MAX:
        del _known_files[next(iter(_known_files))]  # the oldest
    _known_files[digest] = path


def _local_path(ctx: Context, path: str) -> str | None:
    """The blob store's path, if it lies under the directory this gateway may read."""
    root = ctx.settings.local_blob_root
    if not root or not path:
        return None
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real if os.path.commonpath([real, base]) == base else None


def _stream_fill(ctx: Context, name: str, digest: str) -> Response | None:
    """A mirrored blob pulled for the first time: streamed while the blob store stores it (None
    when it turned out stored: linked now, served the usual way). The last chunk comes only once
    the digest verified: on a mismatch the body ends in an error (the connection is cut, no clean
    end), so a client never takes wrong bytes for whole ones."""
    target = ctx.mirror.read_route(name)
    assert target is not None
    filled = ctx.mirror.fill(target[0], digest, target[1], target[2])
    if filled is None:
        return None
    total, chunks = filled
    headers = blob_headers(digest, total)
    if not total:
        del headers["Content-Length"]

    def pulled() -> Iterator[bytes]:
        # The pull's event once the whole blob went out verified, with its real size (the
        # upstream's Content-Length may be missing or wrong; a failed fill is no pull).
        size = 0
        for chunk in chunks:
            size += len(chunk)
            yield chunk
        ctx.pull_events.note_request(target[0], digest, "", size, blob=True)
    # In the request's context: the link made once the last chunk went out is a call with its id.
    return Response(stream_with_context(pulled()), status=200, headers=headers, direct_passthrough=True)


def get(ctx: Context, name: str, digest: str) -> Response:
    digests.validate(digest)
    kept, size = _resolve(ctx, name, digest, fill=bool(request.headers.get("Range")))
    if size is None:
        streamed = _stream_fill(ctx, kept, digest)
        if streamed is not None:
            return streamed
        name, size = kept, ctx.clients.cache.blob_size(kept, digest)
    whole = blob_headers(digest, size)
    cached = unchanged(whole)
    if cached is not None:
        return cached
    span = parse_range(request.headers.get("Range"), size) if range_applies(whole["ETag"]) else None
    first, last = span if span else (0, size - 1)
    length = max(last - first + 1, 0)
    headers = blob_headers(digest, length)
    status = 200
    if span:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if length == 0:
        return empty(status, headers)
    body = _known_file(digest, first, length)
    if body is None:
        location = ctx.clients.blobs.stat(digest, want_location=True)
        if location.redirect_url:
            # Object storage serves the bytes; the client follows the short-lived presigned URL.
            ctx.pull_events.note_request(name, digest, "", size, blob=True)
            return empty(307, {"Location": location.redirect_url, "Docker-Content-Digest": digest,
                               "Cache-Control": "no-store"})
        path = _local_path(ctx, location.local_path)
        if path is not None:
            body = _file_response(path, first, length)
            _remember_file(digest, path)
    if body is None:
        download = _Download()
        try:
            body = download.attach(*ctx.clients.blobs.read(digest, first, length, download.piece))
        except BaseException:
            download.close()
            raise
    ctx.pull_events.note_request(name, digest, "", size, blob=True)
    return Response(body, status=status, headers=headers, direct_passthrough=True)


def delete(ctx: Context, name: str, digest: str) -> Response:
    digests.validate(digest)
    ctx.clients.metadata.unlink_blob(name, digest)
    return empty(202, {"Docker-Content-Digest": digest})
