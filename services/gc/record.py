"""Garbage collection's running totals, kept in Redis (``wharf:gc-record``).

wharf-gc is a job that exits after each run, so nothing would be left to scrape; each run adds
its figures to this record instead, and the metadata service exports the record as the
``wharf_gc_*`` metrics (services/common/metrics.py, ``GcRecord``). Dry runs remove nothing and
add nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from services.common.redisconn import text
from services.metadata import redis_keys as keys


def add_run(client: redis.Redis, ok: bool, **figures: int) -> None:
    """Adds one run: ok, with its figures (blobs_removed, bytes_removed, links_removed,
    manifests_removed, blobs_kept_busy), or failed."""
    with client.pipeline(transaction=True) as pipe:
        if ok:
            pipe.hincrby(keys.GC_RECORD, "runs_ok", 1)
            for field, value in figures.items():
                pipe.hincrby(keys.GC_RECORD, field, value)
            pipe.hset(keys.GC_RECORD, "last_success", str(int(time.time())))
        else:
            pipe.hincrby(keys.GC_RECORD, "runs_failed", 1)
        pipe.execute()


def reader(client: redis.Redis) -> Callable[[], dict[str, float]]:
    """What the metadata service's scrape reads: the record's fields as numbers (none when
    Redis cannot be reached: a scrape must not fail because Redis did)."""
    def read() -> dict[str, float]:
        try:
            raw = client.hgetall(keys.GC_RECORD)
        except redis.RedisError:
            return {}
        found: dict[str, float] = {}
        for field, value in raw.items():
            try:
                found[text(field)] = float(text(value))
            except ValueError:
                continue
        return found
    return read
