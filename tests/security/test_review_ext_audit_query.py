"""A hostile review of the audit log's queries (services/metadata/audit.py), against a real Redis:
the web UI's activity page passes its ``after`` cursor from the query string to QueryAudit."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aredis

from services.common.errors import REQUEST_INVALID, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import redis_keys as keys
from services.metadata.audit import AuditLog


def _query(redis_url: str, **fields: object) -> gpb.QueryAuditResponse:
    async def run() -> gpb.QueryAuditResponse:
        client = aredis.Redis.from_url(redis_url)
        try:
            log = AuditLog(client)
            if not await client.exists(keys.AUDIT):
                await log.record([gpb.AuditRecord(account="a", action="push", repository="a/app", result="ok")])
            return await log.query(gpb.QueryAuditRequest(**fields))  # type: ignore[arg-type]
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("after", ["99999999999999999999-0", "1-18446744073709551616", "18446744073709551616-0"])
def test_a_cursor_past_64_bits_is_the_callers_error(redis_client: redis.Redis, redis_url: str, after: str) -> None:
    """Before: Redis refused the range and the answer was UNAVAILABLE (503, "retry later") on
    /ui/activity?after=99999999999999999999-0."""
    for oldest_first in (False, True):
        with pytest.raises(RegistryError) as refused:
            _query(redis_url, after=after, oldest_first=oldest_first)
        assert refused.value.error is REQUEST_INVALID


def test_the_largest_cursor_still_reads(redis_client: redis.Redis, redis_url: str) -> None:
    top = f"{2**64 - 1}-{2**64 - 1}"
    assert [r.account for r in _query(redis_url, after=top).records] == ["a"]
    assert list(_query(redis_url, after=top, oldest_first=True).records) == []


def test_a_cursor_at_either_end_reads_nothing_past_it(redis_client: redis.Redis, redis_url: str) -> None:
    assert list(_query(redis_url, after="0-0").records) == []
    assert list(_query(redis_url, after="00-000").records) == []
    assert [r.account for r in _query(redis_url, after="0-0", oldest_first=True).records] == ["a"]
