"""The metadata service's side of events: what goes into the outbox with each write.

The outbox itself is written by the write scripts (redis_keys._OUTBOX), so an event exists
exactly when its change does. This module decides which stream a write's events go to (none when
events are off, or for a mirror's fill, which is announced as the pull it serves) and turns the
gateway's Origin into the JSON the event carries, after checking every field: the user agent and
the host come from the client, so they are bounded and reduced to printable ASCII before they
reach Redis, a log line or a webhook body.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any

import redis.asyncio as aredis

from services.common import digests
from services.common.errors import UNSUPPORTED, RegistryError
from services.common.names import validate_name, validate_tag
from services.metadata import redis_keys as keys
from services.metadata.scripts import TimedScript

# Bounds of what an origin may carry, per field.
_LIMITS = {"account": 256, "address": 64, "user_agent": 256, "request_id": 64, "host": 256, "method": 10}
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# The origin of what garbage collection removes.
GC_ORIGIN = json.dumps({"account": "wharf-gc"}, separators=(",", ":"))
# Pull events per call (a gateway's batch).
MAX_PULL_EVENTS = 5000


def clean(value: str, limit: int) -> str:
    """Client-supplied text, cut to ``limit`` characters, every character outside printable ASCII
    (CR, LF, escapes, non-ASCII) replaced by "?": safe in Redis, a log line or a webhook body
    (also the audit log's rule, services/metadata/audit.py)."""
    return _UNPRINTABLE.sub("?", value[:limit])


def origin_json(origin: Any) -> str:
    """The Origin message as the event's compact JSON, every field bounded and printable; "{}"
    for a caller that sent none (an older gateway, wharf-admin)."""
    if origin is None:
        return "{}"
    fields = {name: clean(str(getattr(origin, name)), limit) for name, limit in _LIMITS.items()}
    return json.dumps({k: v for k, v in fields.items() if v}, separators=(",", ":"), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Outbox:
    """Which outbox stream a write's script gets as KEYS (none: no event)."""

    enabled: bool

    def keys_for(self, name: str, origin: Any = None) -> list[str]:
        if not self.enabled or (origin is not None and origin.mirror_fill):
            return []
        return [keys.outbox(keys.outbox_shard(name))]


class PullEvents:
    """Writes the gateways' batches of pull events into the outbox, one script call per shard."""

    def __init__(self, client: aredis.Redis, outbox: Outbox) -> None:
        self._outbox = outbox
        self._emit = TimedScript(client, "emit_pulls", keys.EMIT_PULLS)

    async def record(self, events: list[Any]) -> None:
        if not self._outbox.enabled:
            return
        if len(events) > MAX_PULL_EVENTS:
            raise RegistryError(UNSUPPORTED, f"at most {MAX_PULL_EVENTS} pull events per call")
        by_shard: dict[int, list[str | int]] = collections.defaultdict(list)
        for event in events:
            validate_name(event.repository)
            digests.validate(event.digest)
            if event.tag:
                validate_tag(event.tag)
            media_type = keys.BLOB_MEDIA_TYPE if event.blob else clean(event.media_type, 255)
            by_shard[keys.outbox_shard(event.repository)] += [
                event.repository, event.digest, media_type, max(0, int(event.size)), event.tag,
                origin_json(event.origin), max(0, int(event.at_ms))]
        for shard, args in sorted(by_shard.items()):
            await self._emit(args, [keys.outbox(shard)])
