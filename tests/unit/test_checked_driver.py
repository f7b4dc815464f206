"""base.CheckedDriver holds any driver (a third party's included) to the interface's version,
its key rules and its not-found contract. The real drivers run the full suite through it in
tests/integration/test_storage_drivers.py; this fake checks nothing itself, on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from services.blobstore.storage.base import API_VERSION, CheckedDriver, FileInfo, FileWriter, StorageDriver


class Careless(StorageDriver):
    """Accepts any key, and reports a missing object by raising everywhere."""

    wharf_interface = API_VERSION

    def __init__(self) -> None:
        self.keys: list[str] = []

    def _missing(self, key: str) -> Any:
        self.keys.append(key)
        raise FileNotFoundError(key)

    def get_content(self, key: str) -> bytes:
        return self._missing(key)  # type: ignore[no-any-return]

    def put_content(self, key: str, data: bytes) -> None:
        self.keys.append(key)

    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        return self._missing(key)  # type: ignore[no-any-return]

    def writer(self, key: str, append: bool) -> FileWriter:
        return self._missing(key)  # type: ignore[no-any-return]

    def stat(self, key: str) -> FileInfo | None:
        return self._missing(key)  # type: ignore[no-any-return]

    def list(self, prefix: str) -> Iterator[str]:
        return self._missing(prefix)  # type: ignore[no-any-return]

    def move(self, source: str, dest: str) -> None:
        self._missing(source)

    def delete(self, key: str) -> bool:
        return self._missing(key)  # type: ignore[no-any-return]

    def touch(self, key: str) -> None:
        self._missing(key)


def test_keys_are_checked_before_the_driver_sees_them() -> None:
    careless = Careless()
    driver = CheckedDriver(careless)
    for bad in ("../etc/passwd", "a/../../b", "/abs", "a//b"):
        with pytest.raises(ValueError):
            driver.put_content(bad, b"x")
        with pytest.raises(ValueError):
            driver.move("blobs/ok", bad)
    assert careless.keys == []


def test_not_found_is_mapped_to_the_contract() -> None:
    driver = CheckedDriver(Careless())
    assert driver.stat("blobs/x") is None
    assert driver.delete("blobs/x") is False
    assert list(driver.list("blobs")) == []
    with pytest.raises(FileNotFoundError):
        driver.get_content("blobs/x")


def test_a_driver_of_another_api_version_is_refused() -> None:
    class Old(Careless):
        wharf_interface = API_VERSION - 1

    with pytest.raises(ValueError, match="storage driver API"):
        CheckedDriver(Old())
