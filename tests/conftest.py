"""Fixtures that start real servers; nothing here depends on a fixed port."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from tests.support.stack import RunningStack


@pytest.fixture(scope="session")
def start_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningStack]]:
    """Factory: start_stack(env={...}, data_dir=None) -> a running stack, stopped at session end."""
    started: list[RunningStack] = []

    def start(env: dict[str, str] | None = None, data_dir: pathlib.Path | None = None) -> RunningStack:
        stack = RunningStack(data_dir or tmp_path_factory.mktemp("wharf"), env)
        started.append(stack.start())
        return stack

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture(scope="session")
def stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """One registry with default settings, shared by the tests that only need a registry."""
    return start_stack()
