"""The audit log: who did what, from where, when, and with what result (issue 19).

One Redis stream, ``wharf:audit`` (redis_keys.AUDIT), written by ``RecordAudit`` (the gateway's
writes and logins, the auth service's admin logins and changes) and by this service itself (rule
changes, retention). Why a stream: appends are O(1), entries are ordered by the time they were
recorded (the entry id is that time in ms), a time range is an id range, and Redis trims the
oldest entries itself.

Retention: every append trims to about ``max_entries`` (``MAXLEN ~``, which Redis applies per
whole listpack node, so it costs nothing); at most once a minute this process also trims by age
(``MINID ~`` now - ``max_age``). Both are approximate by design: a few hundred records more is
the price of never trimming entry by entry.

Every field comes from a client (a user agent, an account name someone tried to log in with, a
repository name that failed validation), so before it reaches Redis it is cut to a bound and
reduced to printable ASCII (outbox.clean, the rule events follow); a record's time is the
caller's only when it is plausible (recent), else the time it arrives. Every record is written
with every field, in one order, so that Redis stores the field names once per node.

Queries read newest first (``oldest_first`` reverses it), filtered by account, action,
repository (a name, or a pattern of services/common/patterns.py) and time; one call scans at
most ``SCAN_MAX`` entries, so a filter that matches nothing in a million records costs a bounded
time per call, and answers with ``next`` (the last entry scanned) for the caller to go on from.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis

from services.common.errors import REQUEST_INVALID, RegistryError
from services.common.names import is_valid_name
from services.common.patterns import matches, validate_pattern
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import redis_keys as keys
from services.metadata.outbox import clean

# Records per RecordAudit call (the gateway and the auth service send batches of at most this).
MAX_RECORDS = 1000
# Records per QueryAudit answer (a larger limit is lowered to it), the default, and the entries
# one call reads from Redis at most (in chunks of SCAN_CHUNK) before it answers with `next`.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
SCAN_MAX = 20_000
SCAN_CHUNK = 500
# A record's own time is kept when it is at most this far in the past (a batch waiting in a
# sender) or the future (clock skew), else it is the time of arrival. Queries widen their id
# range by these, so a record is found by its own time.
ACCEPT_PAST_MS = 10 * 60 * 1000
ACCEPT_FUTURE_MS = 5 * 1000
# How often this process trims by age (trimming by count happens with every append).
TRIM_EVERY_S = 60.0

# An account's kind: "" is anonymous; "account" is a named account whose kind the recorder does
# not know (the gateway sees a token's subject, not whether it is a user or a robot).
KINDS = ("", "user", "robot", "account", "operator", "service")
# Stream field -> (AuditRecord field, bound in characters): the one place the layout is written.
_TEXT_FIELDS = {
    "account": ("account", 256), "kind": ("account_kind", 16), "address": ("address", 64),
    "agent": ("user_agent", 256), "action": ("action", 64), "repository": ("repository", 256),
    "reference": ("reference", 256), "result": ("result", 64), "detail": ("detail", 1000),
    "request": ("request_id", 64), "via": ("via", 32),
}
_ENTRY_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_LAST_ID = 2**64 - 1  # each part of a stream entry id


def _now_ms() -> int:
    return int(time.time() * 1000)


def stream_fields(record: gpb.AuditRecord, now_ms: int) -> dict[str, str | int]:
    """A record as the stream entry's fields: every one present, bounded and printable."""
    at = int(record.at_ms)
    if not now_ms - ACCEPT_PAST_MS <= at <= now_ms + ACCEPT_FUTURE_MS:
        at = now_ms
    fields: dict[str, str | int] = {"at": at}
    for name, (attribute, limit) in _TEXT_FIELDS.items():
        fields[name] = clean(str(getattr(record, attribute)), limit)
    if fields["kind"] not in KINDS:
        fields["kind"] = "unknown"
    fields["status"] = int(record.status) if 0 <= record.status <= 999 else 0
    return fields


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: str) -> int:
    return int(value[:20]) if value.isascii() and value.isdigit() else 0


def record_of(entry_id: Any, fields: dict[Any, Any]) -> gpb.AuditRecord:
    """A stream entry as an AuditRecord (fields a later version added are ignored)."""
    values = {_text(k): _text(v) for k, v in fields.items()}
    record = gpb.AuditRecord(id=_text(entry_id))
    for name, (attribute, _) in _TEXT_FIELDS.items():
        setattr(record, attribute, values.get(name, ""))
    record.at_ms = _number(values.get("at", ""))
    record.status = _number(values.get("status", ""))
    return record


class _Filter:
    """A QueryAuditRequest's filters, checked once; ``accepts`` is what each entry is tested with."""

    def __init__(self, request: gpb.QueryAuditRequest) -> None:
        if len(request.account) > 256 or len(request.action) > 64:
            raise RegistryError(REQUEST_INVALID, "an account has at most 256 characters, an action 64")
        self.account = clean(request.account, 256)
        self.action = clean(request.action, 64)
        self.repository = request.repository
        self.pattern = "*" in self.repository
        if self.pattern:
            validate_pattern(self.repository)
        elif self.repository and not is_valid_name(self.repository):
            raise RegistryError(REQUEST_INVALID, f"not a repository name or pattern: {self.repository[:256]!r}")
        if request.since_ms < 0 or request.until_ms < 0 or request.limit < 0:
            raise RegistryError(REQUEST_INVALID, "since, until and limit cannot be negative")
        self.since_ms = int(request.since_ms)
        self.until_ms = int(request.until_ms)

    def accepts(self, record: gpb.AuditRecord) -> bool:
        if self.account and record.account != self.account:
            return False
        if self.action and record.action != self.action:
            return False
        if self.repository:
            if self.pattern:
                if not matches(self.repository, record.repository):
                    return False
            elif record.repository != self.repository:
                return False
        if self.since_ms and record.at_ms < self.since_ms:
            return False
        return not (self.until_ms and record.at_ms > self.until_ms)


class AuditLog:
    def __init__(self, client: aredis.Redis, max_entries: int = 1_000_000, max_age_s: float = 90 * 86400) -> None:
        self._r = client
        self._max_entries = max(int(max_entries), 1)
        self._max_age_ms = max(int(max_age_s * 1000), 1)
        self._trimmed_at = float("-inf")

    async def record(self, records: Sequence[gpb.AuditRecord]) -> None:
        """Appends the records (all or, should Redis fail part-way, the first ones) and trims."""
        if len(records) > MAX_RECORDS:
            raise RegistryError(REQUEST_INVALID, f"at most {MAX_RECORDS} audit records per call")
        if not records:
            return
        now = _now_ms()
        async with self._r.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(keys.AUDIT, stream_fields(record, now),
                          maxlen=self._max_entries, approximate=True)
            if time.monotonic() - self._trimmed_at >= TRIM_EVERY_S:
                self._trimmed_at = time.monotonic()
                pipe.xtrim(keys.AUDIT, minid=f"{max(now - self._max_age_ms, 0)}-0", approximate=True)
            await pipe.execute()

    async def query(self, request: gpb.QueryAuditRequest) -> gpb.QueryAuditResponse:
        found = _Filter(request)
        if request.after and not (_ENTRY_ID_RE.fullmatch(request.after)
                                  and all(int(part) <= _LAST_ID for part in request.after.split("-"))):
            # (Redis refuses parts past 64 bits: that was an UNAVAILABLE, "retry later", for a bad cursor.)
            raise RegistryError(REQUEST_INVALID, "after is an entry id from a previous answer's next")
        edge = f"{_LAST_ID}-{_LAST_ID}" if request.oldest_first else "0-0"
        if request.after and tuple(map(int, request.after.split("-"))) == tuple(map(int, edge.split("-"))):
            return gpb.QueryAuditResponse()  # nothing lies past this end (Redis refuses such a range)
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        low = f"{max(found.since_ms - ACCEPT_FUTURE_MS, 0)}" if found.since_ms else "-"
        high = f"{found.until_ms + ACCEPT_PAST_MS}" if found.until_ms else "+"
        if request.after:
            if request.oldest_first:
                low = "(" + request.after
            else:
                high = "(" + request.after
        answer = gpb.QueryAuditResponse()
        scanned = 0
        while scanned < SCAN_MAX:
            count = min(SCAN_CHUNK, SCAN_MAX - scanned)
            if request.oldest_first:
                entries = await self._r.xrange(keys.AUDIT, low, high, count=count)
            else:
                entries = await self._r.xrevrange(keys.AUDIT, high, low, count=count)
            for entry_id, fields in entries:
                scanned += 1
                record = record_of(entry_id, fields)
                if found.accepts(record):
                    answer.records.append(record)
                if len(answer.records) >= limit:
                    answer.next = record.id
                    return answer
            if len(entries) < count:
                answer.next = ""  # the range is exhausted
                return answer
            last = _text(entries[-1][0])
            if request.oldest_first:
                low = "(" + last
            else:
                high = "(" + last
            answer.next = last
        return answer
