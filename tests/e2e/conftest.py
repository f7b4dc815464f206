"""The real-client tests run against every blob backend: filesystem, and S3 with and without redirects."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import otlp
from tests.support.stack import RunningStack


@pytest.fixture(scope="session", params=["filesystem", "s3-redirect", "s3-streamed"])
def stack(request: pytest.FixtureRequest, start_stack: Callable[..., RunningStack]) -> RunningStack:
    if request.param == "filesystem":
        return start_stack(keep=True)
    server = request.getfixturevalue("seaweedfs")
    redirect = "true" if request.param == "s3-redirect" else "false"
    return start_stack(env={**server.env(), "WHARF_S3_REDIRECT": redirect}, keep=True)


@pytest.fixture(scope="session")
def property_stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """A registry of its own for the property tests (test_properties_*.py), whose thousands of
    generated requests then leave no repositories in the catalog other tests list."""
    return start_stack(keep=True)


@pytest.fixture(scope="module")
def receiver() -> Iterator[otlp.OtlpReceiver]:
    """An OTLP/HTTP receiver in this process (tests/support/otlp.py), one per test module."""
    found = otlp.OtlpReceiver()
    yield found
    found.stop()
