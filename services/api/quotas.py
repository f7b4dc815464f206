"""Holding an upload's bytes against its namespace's quota while they arrive.

Only when the namespace has a quota (services/api/policy.py): then the bytes a request brings are
held before they are written (its Content-Length at once; a body of unknown length in steps of
``STEP`` as it streams), so parallel uploads cannot overshoot the quota together. A request the
quota has no room for is refused with DENIED before its bytes are stored; one refused mid-stream
has its upload session cancelled, so nothing half-written stays. The commit's link gives the hold
back in the same step as it counts the blob (the metadata service, services/metadata/quotas.py).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from flask import request

from services.common.errors import DENIED, RegistryError

if TYPE_CHECKING:
    from services.api.context import Context

STEP = 8 * 1024 * 1024


def applies(ctx: Context, name: str) -> bool:
    return ctx.policy.current().quota(name) is not None


def one_request_id() -> str:
    """The hold's id for a one-request (monolithic) upload, which has no session id: random, not
    the request id, which a client may choose (X-Request-Id): one with a '.' made every such
    upload 400, and two uploads sending the same one shared a hold the first to end gave back."""
    return f"m-{secrets.token_hex(16)}"


class Held:
    """The bytes held for one request's body; ``pieces`` wraps the body when its length is unknown."""

    def __init__(self, ctx: Context, name: str, upload_id: str) -> None:
        self._ctx = ctx
        self.name = name
        self.upload_id = upload_id
        self._held = 0
        # A refusal raised inside the body's iterator reaches the caller as a cancelled gRPC
        # stream; it is kept here so that the client still gets DENIED with its message.
        self.refused: RegistryError | None = None
        # Refused once part of the body was stored: the session is cancelled (views/uploads.py).
        self.mid_body = False

    def up_front(self) -> None:
        """Holds the request's Content-Length (when it has one) before anything is read."""
        length = request.content_length
        if length:
            self._hold(length)

    def pieces(self, body: Iterable[bytes | bytearray]) -> Iterator[bytes | bytearray]:
        """The body, holding STEP bytes ahead of what has arrived when no Content-Length said how much."""
        if request.content_length is not None:
            yield from body
            return
        seen = 0
        for piece in body:
            seen += len(piece)
            while seen > self._held:
                try:
                    self._hold_step(seen - self._held)
                except RegistryError:
                    self.mid_body = True
                    raise
            yield piece

    def _hold_step(self, needed: int) -> None:
        """Holds a STEP ahead, or, when the quota has less room than a STEP left, just what has
        arrived: else a small body of unknown length was refused wherever less than a STEP remained."""
        try:
            self._hold(max(STEP, needed))
        except RegistryError as err:
            if err.error is not DENIED or needed >= STEP:
                raise
            self.refused = None
            self._hold(needed)

    def _hold(self, size: int) -> None:
        try:
            self._ctx.clients.governance.reserve_upload(self.name, self.upload_id, size)
        except RegistryError as err:
            self.refused = err
            raise
        self._held += size

    def release(self, keep: int = 0) -> None:
        """Gives the hold back down to ``keep`` bytes: what the session still stores after a failed
        request stays held (else every failed request freed its session's bytes from the quota, and
        sessions full of bytes could be left open past it)."""
        with contextlib.suppress(RegistryError):
            self._ctx.clients.governance.release_upload(self.name, self.upload_id, keep)
