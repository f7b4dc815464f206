"""Every environment variable a service reads is documented in the README."""

from __future__ import annotations

import pathlib

import pytest

from services.api.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.blobstore.settings import BlobStoreSettings
from services.common.settings import variables
from services.events.settings import EventsSettings
from services.metadata.settings import MetadataSettings
from services.stack.settings import StackSettings

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("settings", [GatewaySettings, BlobStoreSettings, MetadataSettings, AuthSettings,
                                      StackSettings, EventsSettings])
def test_every_variable_is_in_the_readme(settings: type) -> None:
    missing = [var for var in variables(settings) if f"`{var}`" not in README]
    assert not missing, f"document these in README.md: {missing}"
