"""The one driver test suite every storage backend must pass."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from services.blobstore.storage.base import StorageDriver, UploadBusyError
from services.blobstore.storage.filesystem import FilesystemDriver


@pytest.fixture(params=["filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[StorageDriver]:
    if request.param == "filesystem":
        yield FilesystemDriver(tmp_path / "root")


def test_put_get_stat_delete(driver: StorageDriver) -> None:
    assert driver.stat("a/b") is None
    driver.put_content("a/b", b"hello")
    assert driver.get_content("a/b") == b"hello"
    info = driver.stat("a/b")
    assert info is not None and info.size == 5
    assert driver.delete("a/b") is True
    assert driver.delete("a/b") is False
    with pytest.raises(FileNotFoundError):
        driver.get_content("a/b")


def test_writer_appends_across_writers(driver: StorageDriver) -> None:
    with driver.writer("up/data", append=False) as w:
        w.write(b"abc")
        w.commit()
    with driver.writer("up/data", append=True) as w:
        assert w.size == 3
        w.write(b"def")
        w.commit()
        assert w.size == 6
    with driver.reader("up/data", offset=2) as r:
        assert r.read() == b"cdef"


def test_second_writer_on_same_object_is_refused(driver: StorageDriver) -> None:
    with driver.writer("up/data", append=True), pytest.raises(UploadBusyError):
        driver.writer("up/data", append=True)


def test_move_replaces_and_removes_source(driver: StorageDriver) -> None:
    driver.put_content("src/x", b"1")
    driver.move("src/x", "dst/y")
    assert driver.stat("src/x") is None and driver.get_content("dst/y") == b"1"


def test_list_and_delete_prefix(driver: StorageDriver) -> None:
    driver.put_content("p/one/data", b"1")
    driver.put_content("p/two/data", b"2")
    assert list(driver.list("p")) == ["one", "two"]
    assert driver.delete("p/one")
    assert list(driver.list("p")) == ["two"]
    assert list(driver.list("missing")) == []


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/./b", "", "A/b", "a/b c"])
def test_unsafe_keys_are_refused(driver: StorageDriver, key: str) -> None:
    with pytest.raises(ValueError):
        driver.put_content(key, b"x")
