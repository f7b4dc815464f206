"""The audit log (services/metadata/audit.py) against a real Redis: what is stored is bounded and
printable, queries filter, page and stop after a bounded scan, and the stream is trimmed by count
and by age."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from services.common.errors import REQUEST_INVALID, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import audit as audit_module
from services.metadata import redis_keys as keys
from services.metadata.audit import MAX_RECORDS, AuditLog
from tests.integration.test_metadata_lifecycle import Sync


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_log(loop: asyncio.AbstractEventLoop, redis_url: str, **options: Any) -> Sync:
    return Sync(loop, AuditLog(aredis.Redis.from_url(redis_url), **options))


@pytest.fixture()
def log(redis_client: redis.Redis, redis_url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    return make_log(loop, redis_url)


def record(**fields: Any) -> gpb.AuditRecord:
    return gpb.AuditRecord(**{"at_ms": int(time.time() * 1000), "account": "alice", "account_kind": "account",
                              "address": "10.0.0.1", "action": "push", "repository": "team/app",
                              "reference": "v1", "result": "ok", "status": 201, "via": "gateway", **fields})


def query(log: Sync, **fields: Any) -> gpb.QueryAuditResponse:
    return log.query(gpb.QueryAuditRequest(**fields))  # type: ignore[no-any-return]


def test_fields_are_bounded_and_printable(log: Sync) -> None:
    log.record([record(user_agent="curl\r\nX-Evil: 1\x1b" + "a" * 5000, account="bob\n" + "b" * 5000,
                       account_kind="root", detail="d" * 5000, status=70000, at_ms=1)])
    [stored] = query(log).records
    assert stored.user_agent == ("curl??X-Evil: 1?" + "a" * 5000)[:256]
    assert stored.account == ("bob?" + "b" * 5000)[:256]
    assert stored.account_kind == "unknown" and stored.status == 0 and len(stored.detail) == 1000
    # A time from far away is replaced by the time of arrival.
    assert abs(stored.at_ms - time.time() * 1000) < 60_000


def test_too_many_records_in_one_call_are_refused(log: Sync, redis_client: redis.Redis) -> None:
    with pytest.raises(RegistryError) as refused:
        log.record([record()] * (MAX_RECORDS + 1))
    assert refused.value.error is REQUEST_INVALID
    assert redis_client.xlen(keys.AUDIT) == 0


def test_queries_filter_and_page_newest_first(log: Sync) -> None:
    now = int(time.time() * 1000)
    log.record([record(account="alice", repository="team/app", at_ms=now - 3000),
                record(account="bob", repository="team/db", action="delete", at_ms=now - 2000),
                record(account="alice", repository="other/app", action="login", at_ms=now - 1000),
                record(account="", repository="team/app/sub", action="upload", at_ms=now)])
    everything = query(log).records
    assert [r.at_ms for r in everything] == [now, now - 1000, now - 2000, now - 3000]
    assert [r.repository for r in query(log, account="alice").records] == ["other/app", "team/app"]
    assert [r.repository for r in query(log, repository="team/app").records] == ["team/app"]
    assert [r.repository for r in query(log, repository="team/**").records] == ["team/app/sub", "team/db",
                                                                                "team/app"]
    assert [r.repository for r in query(log, repository="*/app").records] == ["other/app", "team/app"]
    assert [r.action for r in query(log, action="delete").records] == ["delete"]
    assert [r.at_ms for r in query(log, since_ms=now - 2000, until_ms=now - 1000).records] == [now - 1000,
                                                                                            now - 2000]
    oldest = query(log, oldest_first=True).records
    assert [r.at_ms for r in oldest] == sorted(r.at_ms for r in everything)
    # Pages of two, by the cursor.
    first = query(log, limit=2)
    assert len(first.records) == 2 and first.next == first.records[-1].id
    second = query(log, limit=2, after=first.next)
    assert [r.at_ms for r in second.records] == [now - 2000, now - 3000]
    assert not query(log, limit=2, after=second.records[-1].id).records
    upward = query(log, limit=3, oldest_first=True)
    assert [r.at_ms for r in query(log, oldest_first=True, after=upward.next).records] == [now]


@pytest.mark.parametrize("fields", [{"repository": "Not A Name"}, {"repository": "team/**x"}, {"limit": -1},
                                    {"since_ms": -5}, {"after": "1-2-3"}, {"account": "a" * 300}])
def test_bad_queries_are_refused(log: Sync, fields: dict[str, Any]) -> None:
    with pytest.raises(RegistryError) as refused:
        query(log, **fields)
    assert refused.value.error is REQUEST_INVALID


def test_a_query_scans_a_bounded_number_of_entries_and_says_where_to_go_on(
        log: Sync, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "SCAN_MAX", 10)
    monkeypatch.setattr(audit_module, "SCAN_CHUNK", 4)
    log.record([record(account="carol")] + [record(account="alice") for _ in range(25)])
    pages, found, after = 0, [], ""
    while True:
        answer = query(log, account="carol", after=after)
        pages += 1
        found += list(answer.records)
        if not answer.next:
            break
        after = answer.next
    assert [r.account for r in found] == ["carol"] and pages == 3


def test_the_stream_is_trimmed_by_count_and_by_age(redis_client: redis.Redis, redis_url: str,
                                                   loop: asyncio.AbstractEventLoop) -> None:
    counted = make_log(loop, redis_url, max_entries=100)
    for _ in range(10):
        counted.record([record() for _ in range(100)])
    # MAXLEN ~ trims whole nodes: about the limit, never far above it.
    assert 100 <= redis_client.xlen(keys.AUDIT) <= 300
    redis_client.delete(keys.AUDIT)
    old_id = f"{int(time.time() * 1000) - 10_000}-0"
    for n in range(300):
        redis_client.xadd(keys.AUDIT, {"at": "1", "action": "old"}, id=f"{old_id[:-2]}-{n}")
    aged = make_log(loop, redis_url, max_age_s=5)
    aged.record([record()])
    # MINID ~ removes whole nodes of entries older than the age; the new record stays.
    remaining = redis_client.xrange(keys.AUDIT)
    assert len(remaining) < 301 and remaining[-1][1][b"action"] == b"push"
