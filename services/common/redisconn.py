"""Redis clients from one URL, for a single server or a Sentinel-managed primary.

A registry's metadata lives in Redis, so a production deployment wants Redis to survive the
loss of a machine; Redis Sentinel is the standard way (it promotes a replica and tells
clients where the new primary is). Every service that talks to Redis builds its client here,
from a URL:

- ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path?db=0``:
  one server, as redis-py reads them;
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/<primary name>[/db]``: ask
  these sentinels for the primary called ``<primary name>``; the credentials are the
  primary's (sentinels are asked without them unless ``?sentinel_password=…`` is given).

With Sentinel, a failover fails the calls in flight (the services answer them with 503) and
the next call finds the new primary. Replication is asynchronous: writes acknowledged just
before a primary dies can be lost unless Redis is configured with ``min-replicas-to-write``.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel

SENTINEL_SCHEME = "redis+sentinel"


def text(value: bytes | str | None) -> str:
    """A Redis reply as text (clients here do not decode replies; None, a missing value, is "")."""
    return value.decode() if isinstance(value, bytes) else (value or "")


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    primary: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The parts of a ``redis+sentinel://`` URL; None for any other URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in (i.strip() for i in hosts.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "26379"
        if not host:
            raise ValueError(f"sentinel URL: no host in {item!r}")
        try:
            sentinels.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ValueError(f"sentinel URL: bad port in {item!r}") from None
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("sentinel URL: the path must be /<primary name>[/<db>]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"sentinel URL: bad database number {path[1]!r}") from None
    query = urllib.parse.parse_qs(parts.query)
    return SentinelTarget(sentinels, urllib.parse.unquote(path[0]), db,
                          urllib.parse.unquote(parts.username) if parts.username else None,
                          urllib.parse.unquote(parts.password) if parts.password else None,
                          query.get("sentinel_password", [None])[0])


def _sentinel_kwargs(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels: the primary's timeouts, the sentinels' own password."""
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    return {**timeouts, "password": target.sentinel_password}


def sync_client(url: str, **options: Any) -> redis.Redis:
    target = parse_sentinel_url(url)
    if target is None:
        return redis.Redis.from_url(url, **options)
    sentinel = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, options))
    return sentinel.master_for(target.primary, db=target.db, username=target.username, password=target.password,
                               **options)


def async_client(url: str, max_connections: int, **options: Any) -> aredis.Redis:
    """Past ``max_connections`` concurrent calls, callers wait for a connection (single server)."""
    target = parse_sentinel_url(url)
    if target is None:
        pool: aredis.BlockingConnectionPool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, **options)
        return aredis.Redis(connection_pool=pool)
    sentinel = asentinel.Sentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, options))
    return sentinel.master_for(target.primary, db=target.db, username=target.username, password=target.password,
                               max_connections=max_connections, **options)
