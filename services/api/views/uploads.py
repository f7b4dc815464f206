"""Blob uploads: POST (session, monolithic, mount), PATCH, PUT, GET status, DELETE.

An upload's Location is ``/v2/<name>/blobs/uploads/<id>``; the blob store
keeps the bytes and the offset, so any gateway can continue any session.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from flask import Response, request

from services.api import quotas
from services.api.mounts import mountable_size
from services.api.quotas import Held
from services.api.request_input import bounded_int, digest_arg, request_body, small_body
from services.api.responses import empty
from services.common import digests
from services.common.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    RegistryError,
)

if TYPE_CHECKING:
    from services.api.context import Context
    from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(\d+|\*))?\Z")
# Offsets are int64 on the wire to the blob store; no session can reach a larger one.
_MAX_OFFSET = 2**63 - 1


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _range_header(size: int) -> str:
    # Inclusive end of what was received; an empty session reports 0-0 as Distribution does.
    return f"0-{max(size - 1, 0)}"


def _session_headers(name: str, status: bpb.UploadStatus) -> dict[str, str]:
    return {"Location": _location(name, status.upload_id), "Range": _range_header(status.size),
            "Docker-Upload-UUID": status.upload_id, "OCI-Chunk-Min-Length": "0"}


def _created(name: str, digest: str) -> Response:
    return empty(201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _committed(ctx: Context, name: str, digest: str, commit: Callable[[], bpb.BlobInfo],
               held: Held | None = None, whole: bytes | None = None) -> Response:
    """Commits an upload in the blob store and links it, holding the blob against garbage collection
    in between (the metadata service's README, "Online garbage collection"). While the last link
    in this process saw no collection running, the link itself checks that none started since
    ("Uploads without a pin": one call and one durable Redis write less per push); else, and
    when that check refuses, a pin taken before the commit (``_pinned``) holds it. The link gives
    the upload's hold on the namespace's quota back (``held``)."""
    metadata = ctx.clients.metadata
    upload_id = held.upload_id if held else ""
    seen = metadata.collections_quiet()
    if seen is None:
        return _pinned(ctx, name, digest, commit, upload_id)
    blob = commit()
    if metadata.link_unpinned(name, digest, blob.size, seen, upload_id):
        return _created(name, digest)
    # A collection runs or started since: it may have taken the bytes the commit found. A body
    # held whole is stored again only when it is the whole blob: the closing PUT of a chunked
    # upload carries only its last chunk (stored as such, it would fail its digest check and lose
    # the upload).
    if whole is not None and digests.of(whole, digests.parse(digest)[0]) == digest:
        data: bytes = whole
        return _pinned(ctx, name, digest, lambda: ctx.clients.blobs.put_whole(digest, data), upload_id)

    def still_stored() -> bpb.BlobInfo:
        try:
            return ctx.clients.blobs.stat(digest)
        except RegistryError as err:
            if err.error is not BLOB_UNKNOWN:
                raise
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "garbage collection removed the blob while it was being "
                                                     "committed; upload it again") from None
    return _pinned(ctx, name, digest, still_stored, upload_id)


def _pinned(ctx: Context, name: str, digest: str, commit: Callable[[], bpb.BlobInfo], upload_id: str) -> Response:
    """``commit`` under a pin taken before it, then the link that consumes the pin."""
    metadata = ctx.clients.metadata
    pin = metadata.pin_blob(digest)
    try:
        blob = commit()
    except BaseException:
        # A failed commit (a digest mismatch, a client gone) gives its pin back at once; should
        # that fail too, the pin lapses on its own.
        with contextlib.suppress(RegistryError):
            metadata.unpin_blob(digest, pin)
        raise
    metadata.link_blob(name, digest, blob.size, pin=pin, upload_id=upload_id)
    return _created(name, digest)


def _try_mount(ctx: Context, name: str, digest: str, source: str | None) -> Response | None:
    """Links an existing blob into ``name``; None when it cannot be mounted. The link is made only
    if the source still links the blob when it is written (a collection may have unlinked it)."""
    size = mountable_size(ctx, digest, source)
    if size is None or not ctx.clients.metadata.link_blob(name, digest, size, source=source or "*"):
        return None
    return _created(name, digest)


def start(ctx: Context, name: str) -> Response:
    ctx.mirror.refuse_push(name)
    mount = request.args.get("mount")
    if mount:
        digests.validate(mount)
        mounted = _try_mount(ctx, name, mount, request.args.get("from"))
        if mounted is not None:
            return mounted
    elif "digest" in request.args:
        digest = digest_arg()
        held = Held(ctx, name, quotas.one_request_id()) if quotas.applies(ctx, name) else None
        with contextlib.ExitStack() as stack:
            if held is not None:
                stack.enter_context(_holding(held))
                held.up_front()
            whole = stack.enter_context(small_body())

            def put() -> bpb.BlobInfo:
                if whole is not None:
                    return ctx.clients.blobs.put_whole(digest, whole)
                with request_body() as body:
                    return ctx.clients.blobs.put(digest, held.pieces(body) if held else body)
            return _committed(ctx, name, digest, put, held, whole)
    status = ctx.clients.blobs.start_upload(name)
    return empty(202, _session_headers(name, status))


def _offset_from_content_range(ctx: Context, name: str, upload_id: str) -> tuple[int, int | None]:
    """The offset a chunk claims via Content-Range (-1 for "append at the end"), and the length
    the range declares (None without one)."""
    header = request.headers.get("Content-Range")
    if not header:
        return -1, None
    found = _CONTENT_RANGE_RE.match(header.strip())
    if not found:
        raise RegistryError(BLOB_UPLOAD_INVALID, f"malformed Content-Range {header[:100]!r}")
    first, last = bounded_int(found.group(1), _MAX_OFFSET + 1), bounded_int(found.group(2), _MAX_OFFSET + 1)
    # A complete length, when given (RFC 9110's form; the spec's PATCH has none), must hold the
    # range: "0-4/3" names bytes past the end it declares.
    total = found.group(3)
    beyond = total not in (None, "*") and last >= bounded_int(total, _MAX_OFFSET + 1)
    length = request.content_length
    if last < first or last > _MAX_OFFSET or beyond or (length is not None and length != last - first + 1):
        status = ctx.clients.blobs.get_upload(name, upload_id)
        raise RegistryError(BLOB_UPLOAD_INVALID, "Content-Range does not match the body",
                            headers=_session_headers(name, status), http_status=416)
    return first, last - first + 1


def _as_declared(pieces: Iterable[bytes | bytearray], declared: int) -> Iterator[bytes | bytearray]:
    """A body of unknown length (chunked) held to the length its Content-Range declares, which
    only its end can show: a piece past it is not sent on, and the request fails as a range that
    does not match (what came before it stays stored, as after any failure part-way)."""
    received = 0
    for piece in pieces:
        received += len(piece)
        if received > declared:
            raise RegistryError(RANGE_INVALID, "the body is longer than its Content-Range")
        yield piece
    if received != declared:
        raise RegistryError(RANGE_INVALID, "the body is shorter than its Content-Range")


def _append(ctx: Context, name: str, upload_id: str, commit_digest: str = "",
            held: Held | None = None, body_read: bytes | None = None) -> bpb.AppendResponse:
    """Appends the request's body (``body_read``: already read whole), committing with ``commit_digest``."""
    offset, declared = _offset_from_content_range(ctx, name, upload_id)
    try:
        if held is not None:
            held.up_front()
        with contextlib.nullcontext(body_read) if body_read is not None else small_body() as whole:
            if whole is not None:
                return ctx.clients.blobs.append_single(name, upload_id, offset, whole, commit_digest)
        with request_body() as body:
            pieces: Iterable[bytes | bytearray] = held.pieces(body) if held else body
            if declared is not None and request.content_length is None:
                pieces = _as_declared(pieces, declared)
            return ctx.clients.blobs.append(name, upload_id, offset, pieces, commit_digest)
    except RegistryError as err:
        if err.error is RANGE_INVALID:
            status = ctx.clients.blobs.get_upload(name, upload_id)
            raise RegistryError(BLOB_UPLOAD_INVALID, err.message, headers=_session_headers(name, status),
                                http_status=416) from None
        raise


@contextlib.contextmanager
def _holding(held: Held, session: tuple[Context, str] | None = None) -> Iterator[None]:
    """Runs an upload request under its quota hold. Refused (the quota has no room) or failed
    before its commit's link: the hold goes back down to what the session (``session``: its
    gateway context and upload id) still stores; refused in the middle of a body, the session is
    cancelled too, so no half-written bytes stay; the client gets the refusal, DENIED."""
    try:
        yield
    except BaseException:
        if held.refused is not None and session is not None and held.mid_body:
            with contextlib.suppress(RegistryError):
                session[0].clients.blobs.cancel(held.name, session[1])
            session = None  # cancelled: nothing stays stored
        held.release(_still_stored(held.name, session))
        if held.refused is not None:
            raise held.refused from None
        raise


def _still_stored(name: str, session: tuple[Context, str] | None) -> int:
    """What a session holds after a failed request (0: none, or it ended): its bytes stay counted."""
    if session is None:
        return 0
    try:
        return int(session[0].clients.blobs.get_upload(name, session[1]).size)
    except RegistryError:
        return 0


def _session_held(ctx: Context, name: str, upload_id: str) -> Held | None:
    return Held(ctx, name, upload_id) if quotas.applies(ctx, name) else None


def patch(ctx: Context, name: str, upload_id: str) -> Response:
    held = _session_held(ctx, name, upload_id)
    if held is None:
        result = _append(ctx, name, upload_id)
    else:
        with _holding(held, (ctx, upload_id)):
            result = _append(ctx, name, upload_id, held=held)
    return empty(202, _session_headers(name, result.status))


def finish(ctx: Context, name: str, upload_id: str) -> Response:
    digest = digest_arg()
    has_body = (request.content_length or 0) > 0 or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    try:
        return _finish(ctx, name, upload_id, digest, has_body)
    except RegistryError as err:
        if has_body or not _closed_before(ctx, name, digest, err):
            raise
        return _created(name, digest)


def _closed_before(ctx: Context, name: str, digest: str, err: RegistryError) -> bool:
    """Whether a body-less closing PUT that found its session empty is the retry of a close that
    took place (its 201 lost with the connection): a finished upload's URL reads as a new, empty
    session (the blob store keeps nothing per finished id: services/blobstore/blobs.py, ``_end``),
    and the retry got 400 DIGEST_INVALID, which docker and containerd take as the push failing.
    It did not fail when the repository links the blob: the same 201 as the first answer."""
    if err.error is not DIGEST_INVALID or not isinstance(err.detail, dict) or err.detail.get("size") != 0:
        return False
    try:
        ctx.clients.metadata.blob_size(name, digest)
    except RegistryError:
        return False
    return True


def _finish(ctx: Context, name: str, upload_id: str, digest: str, has_body: bool) -> Response:
    held = _session_held(ctx, name, upload_id)
    with contextlib.ExitStack() as stack:
        if held is not None:
            stack.enter_context(_holding(held, (ctx, upload_id)))
        if not has_body:
            return _committed(ctx, name, digest, lambda: ctx.clients.blobs.commit(name, upload_id, digest), held)
        whole = stack.enter_context(small_body())
        return _committed(ctx, name, digest, lambda: _append(ctx, name, upload_id, digest, held, whole).blob,
                          held, whole)


def status(ctx: Context, name: str, upload_id: str) -> Response:
    result = ctx.clients.blobs.get_upload(name, upload_id)
    return empty(204, _session_headers(name, result))


def cancel(ctx: Context, name: str, upload_id: str) -> Response:
    ctx.clients.blobs.cancel(name, upload_id)
    held = _session_held(ctx, name, upload_id)
    if held is not None:
        held.release()
    return empty(204)
