"""A streaming call's wrapper (services/common/grpcserver.py) closed in another context than the
one it started in: what asyncio's finalizer does to the stream of a caller that went away."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

from services.common.grpcserver import ServiceInterceptor


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()


async def _numbers(request: Any, context: Any) -> AsyncIterator[int]:
    yield 1
    yield 2


def test_a_stream_closed_in_another_context_does_not_raise() -> None:
    wrapper = ServiceInterceptor("test", "token")._wrap_stream(_numbers, "/test/Numbers")
    stream = wrapper(None, _Context())

    async def run() -> None:
        first = await asyncio.get_running_loop().create_task(stream.__anext__(), context=contextvars.copy_context())
        assert first == 1
        # Closed from a task of its own context, as the finalizer of an abandoned stream does.
        await asyncio.get_running_loop().create_task(stream.aclose(), context=contextvars.copy_context())

    asyncio.run(run())
