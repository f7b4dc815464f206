"""Fixtures for the client's unit tests: an in-memory registry wired into a real Client, no sockets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from wharf_client import Client, ClientOptions, Credential, RegistryOptions, StaticCredentials

from tests.unit.client.fakeregistry import HOST, FakeRegistry


@pytest.fixture()
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture()
def make_client(fake: FakeRegistry) -> Callable[..., Client]:
    """Client(**options) talking to ``fake``; sleeps are recorded in ``client.slept`` instead of slept."""

    def make(credential: Credential | None = None, **options: object) -> Client:
        session = requests.Session()
        settings = ClientOptions(default_registry_options=RegistryOptions(plain_http=True), backoff=0.01,
                                 **options)  # type: ignore[arg-type]
        client = Client(settings, StaticCredentials({HOST: credential} if credential else {}), session)
        session.mount(f"http://{HOST}", fake)
        slept: list[float] = []
        client.transport(HOST)._sleep = slept.append
        client.slept = slept  # type: ignore[attr-defined]
        return client
    return make
