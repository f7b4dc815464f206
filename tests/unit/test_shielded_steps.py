"""A storage step that outlives its cancelled call (services/common/grpcserver.shielded)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from services.common.errors import DIGEST_INVALID, RegistryError
from services.common.grpcserver import shielded


async def _cancelled_while(step_error: BaseException) -> None:
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        await asyncio.sleep(0.05)
        raise step_error

    async def call() -> None:
        await shielded(step())

    task = asyncio.ensure_future(call())
    await started.wait()
    task.cancel()  # the client went away: the call ends, the step goes on
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the step has failed, with no one awaiting it
    gc.collect()  # where asyncio reports a task whose exception no one retrieved


@pytest.mark.parametrize("error,logged", [
    (RegistryError(DIGEST_INVALID, "content digest does not match"), []),
    (OSError("disk gone"), ["a step that outlived its cancelled call failed"]),
])
def test_a_step_that_fails_after_its_call_is_cancelled_is_logged_once_or_not_at_all(
        caplog: pytest.LogCaptureFixture, error: BaseException, logged: list[str]) -> None:
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_cancelled_while(error))
    assert [record.getMessage() for record in caplog.records
            if record.name == "wharf.rpc" and record.levelno >= logging.WARNING] == logged


def test_a_step_still_answers_its_call_and_its_failure_is_the_calls(caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> int:
        return 7

    async def failing() -> int:
        raise OSError("read-only replica")

    assert asyncio.run(shielded(step())) == 7
    with caplog.at_level(logging.DEBUG), pytest.raises(OSError):
        asyncio.run(shielded(failing()))
    assert not [record for record in caplog.records if record.name == "wharf.rpc"]  # the caller has it
