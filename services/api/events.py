"""The gateway's part in events: who made a write (sent with it), and pull events (batched).

Writes carry an Origin to the metadata service, whose script records the event with the change
(services/metadata/outbox.py). Pulls change nothing, so their events are not worth a round trip
before the answer: a pull is one dictionary store here, and a background thread sends a batch every
second (services/api/batching.py). Only the share of pulls the endpoints want is recorded
(``pull_sample``; none when every endpoint ignores pulls), so a registry whose consumers do not
care about pulls pays nothing for them.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from flask import g, has_request_context, request

from services.api.batching import Batcher
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb

if TYPE_CHECKING:
    from services.api.clients import MetadataClient

# Pull events kept between flushes (beyond it, pulls go unrecorded until the next flush), and how often.
_PULLS_MAX = 20_000
_FLUSH_EVERY = 1.0


def current_origin() -> mpb.Origin | None:
    """Who is making the request being served (for its write's event); None outside a request."""
    if not has_request_context():
        return None
    claims = g.get("claims")
    return origin_of(request.environ, claims.subject if claims else "", str(g.get("client_address", "")),
                     str(g.get("request_id", "")))


def origin_of(environ: dict[str, Any], account: str, address: str, request_id: str) -> mpb.Origin:
    """The request's origin. Values are passed as sent; the metadata service bounds and cleans
    every field before it records one."""
    return mpb.Origin(account=account, address=address, user_agent=str(environ.get("HTTP_USER_AGENT", ""))[:512],
                      request_id=request_id, host=str(environ.get("HTTP_HOST", ""))[:512],
                      method=str(environ.get("REQUEST_METHOD", ""))[:16])


class PullEvents:
    """Records the configured share of pulls for the event outbox (nothing when it is 0).

    Within one flush (a second), repeated pulls of the same thing by the same client (account,
    address, user agent) are one event, the first's: a client polling a tag, or a benchmark, does
    not turn into thousands of identical events, while a thousand nodes pulling an image are a
    thousand. Per pull, this costs a tuple and a dictionary store; the messages are built by the
    flush, off the request's path."""

    def __init__(self, share: float, metadata: MetadataClient) -> None:
        self.share = share
        self._metadata = metadata
        self._batch: Batcher[tuple[str, ...], tuple[Any, ...]] = Batcher("pull-events", self._send, _FLUSH_EVERY,
                                                                         _PULLS_MAX)

    @property
    def enabled(self) -> bool:
        return self.share > 0

    def sampled(self) -> bool:
        """Whether to record this pull (call only when enabled)."""
        return self.share >= 1 or random.random() < self.share

    def note(self, environ: dict[str, Any], account: str, address: str, request_id: str, repository: str,
             digest: str, media_type: str, size: int, tag: str = "", blob: bool = False) -> None:
        key = (repository, digest, tag, "b" if blob else "m", account, address,
               str(environ.get("HTTP_USER_AGENT", ""))[:512])
        self._batch.add_first(key, (media_type, size, request_id, str(environ.get("HTTP_HOST", ""))[:512],
                                    str(environ.get("REQUEST_METHOD", ""))[:16], int(time.time() * 1000)))

    def note_request(self, repository: str, digest: str, media_type: str, size: int, tag: str = "",
                     blob: bool = False) -> None:
        """``note`` for the pull the view is answering (when pulls are recorded and this one is sampled)."""
        if self.enabled and self.sampled() and has_request_context():
            claims = g.get("claims")
            self.note(request.environ, claims.subject if claims else "", str(g.get("client_address", "")),
                      str(g.get("request_id", "")), repository, digest, media_type, size, tag, blob)

    def flush(self) -> None:
        self._batch.flush()

    def _send(self, batch: dict[tuple[str, ...], tuple[Any, ...]]) -> None:
        events = []
        for (repository, digest, tag, kind, account, address, agent), (media_type, size, rid, host, method, at) \
                in sorted(batch.items(), key=lambda item: item[1][5]):
            origin = mpb.Origin(account=account, address=address, user_agent=agent, request_id=rid, host=host,
                                method=method)
            events.append(mpb.PullEvent(repository=repository, digest=digest, media_type=media_type, size=size,
                                        tag=tag, origin=origin, at_ms=at, blob=kind == "b"))
        self._metadata.record_pull_events(events)
