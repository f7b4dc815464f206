"""The walkthrough's driver (docs/extending.md) passes Wharf's storage-driver suite."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

from services.blobstore.storage.testsuite import *  # noqa: F403 - the suite's tests and fixtures

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the walkthrough is not installed
from wharf_tinydisk import TinyDisk


@pytest.fixture()
def backend(tmp_path: pathlib.Path) -> Iterator[TinyDisk]:
    yield TinyDisk(tmp_path / "root")
