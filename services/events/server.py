"""The event delivery service: a replica's lease loop and workers, behind the usual gRPC shell.

It serves no API of its own; it runs on the same asyncio gRPC bootstrap as the other services
(services/common/grpcserver.py) for what that gives every service: health checks for the
orchestrator, /metrics, and a graceful stop on SIGTERM (the replica hands its shards back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from services.common import grpcserver, redisconn
from services.common.internal_auth import read_token
from services.events.config import Events
from services.events.replica import Replica
from services.events.settings import EventsSettings


async def serve(settings: EventsSettings, events: Events, on_port: Callable[[int], None] | None = None) -> None:
    token = read_token(settings.internal_token_file)
    # Each worker blocks in a stream read for half a second at a time: the socket timeout is above it.
    client = redisconn.sync_client(settings.redis_url, socket_timeout=10, socket_connect_timeout=2)
    replica = Replica(client, events, settings.public_url, settings.lease_ttl)
    replica.start()

    async def stop() -> None:
        await asyncio.get_running_loop().run_in_executor(None, replica.stop)

    def register(server: grpc.aio.Server) -> list[str]:
        return []

    await grpcserver.serve("events", settings.listen, register, internal_token=token, on_port=on_port,
                           on_stop=stop, metrics_address=settings.metrics_addr, otlp_endpoint=settings.otlp_endpoint)


def run(settings: EventsSettings, events: Events, on_port: Callable[[int], None] | None = None) -> None:
    asyncio.run(serve(settings, events, on_port))
