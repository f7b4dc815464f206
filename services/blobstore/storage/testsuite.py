"""The storage-driver test suite: what every driver must do, for Wharf's drivers and anyone's.

Wharf's own drivers run it (tests/integration/test_storage_drivers.py), and a third-party driver
runs it the same way from its own tests: import the suite's tests into a test module and give
them a ``backend`` fixture that yields a fresh driver (an empty root, bucket or prefix)::

    import pytest
    from services.blobstore.storage.testsuite import *  # noqa: F403 - the suite's tests and fixtures

    @pytest.fixture()
    def backend(tmp_path):
        yield MyDriver(tmp_path / "root")

The tests use the driver as the blob store does, behind ``CheckedDriver`` (the ``driver``
fixture), plus ``backend`` itself where the backend's own behaviour is the point. It needs pytest
(a test dependency, not a runtime one).
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from services.blobstore.storage.base import CheckedDriver, StorageDriver, UploadBusyError

__all__ = [
    "driver",
    "test_a_refused_replacing_writer_leaves_the_holders_bytes",
    "test_a_second_writer_is_refused",
    "test_cancel_discards",
    "test_concurrent_deletes_of_one_prefix",
    "test_large_appends_across_writers",
    "test_list_and_delete_prefix",
    "test_move_replaces_and_removes_source",
    "test_not_found_follows_the_contract",
    "test_put_get_stat_delete",
    "test_touch_renews_the_age",
    "test_unsafe_keys_are_refused",
    "test_writer_appends_across_writers",
]


@pytest.fixture()
def driver(backend: StorageDriver) -> StorageDriver:
    return CheckedDriver(backend)


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
    stat = driver.stat("up/data")
    assert stat is not None and stat.size == 3
    with driver.writer("up/data", append=True) as w:
        assert w.size == 3
        w.write(b"def")
        assert w.size == 6
    finishing = driver.writer("up/data", append=True)
    assert finishing.size == 6
    finishing.commit()
    with driver.reader("up/data", offset=2) as r:
        assert r.read() == b"cdef"


def test_large_appends_across_writers(driver: StorageDriver) -> None:
    """Chunks that are not multiples of any part size, spread over several writers."""
    chunks = [bytes([i]) * (3 * 1024 * 1024 + i) for i in range(4)]
    for chunk in chunks:
        with driver.writer("big/data", append=True) as w:
            w.write(chunk[: len(chunk) // 2])
            w.write(chunk[len(chunk) // 2:])
    w = driver.writer("big/data", append=True)
    w.commit()
    with driver.reader("big/data") as r:
        assert r.read() == b"".join(chunks)
    with driver.reader("big/data", offset=len(chunks[0]) + 5) as r:
        assert r.read(10) == chunks[1][5:15]


def test_cancel_discards(driver: StorageDriver) -> None:
    with driver.writer("gone/data", append=True) as w:
        w.write(b"x" * 100)
    driver.writer("gone/data", append=True).cancel()
    assert driver.stat("gone/data") is None


def test_a_second_writer_is_refused(driver: StorageDriver) -> None:
    """One writer per key (the FileWriter contract): a second is refused, never interleaved,
    until the first closes. (tests/security/test_blobstore_s3_exclusion.py races replicas.)"""
    with driver.writer("up/data", append=True) as first:
        first.write(b"a")
        with pytest.raises(UploadBusyError):
            driver.writer("up/data", append=True)
    with driver.writer("up/data", append=True) as second:
        assert second.size == 1


def test_a_refused_replacing_writer_leaves_the_holders_bytes(driver: StorageDriver) -> None:
    """A writer that would replace the object (append=False) and is refused must not have touched
    it: the holder's bytes stay whole (a mirror's concurrent fills of one blob rely on it)."""
    first = os.urandom(6 * 1024 * 1024 + 5)  # past the writers' buffers: some of it is on disk
    with driver.writer("fill/data", append=False) as holder:
        holder.write(first)
        with pytest.raises(UploadBusyError):
            driver.writer("fill/data", append=False)
        holder.write(b"y" * 3000)
        holder.commit()
    with driver.reader("fill/data") as handle:
        assert handle.read() == first + b"y" * 3000


def test_concurrent_deletes_of_one_prefix(driver: StorageDriver) -> None:
    """Deletes racing each other all answer (True or False) and leave nothing behind."""
    for name in ("data", "info"):
        driver.put_content(f"race/s/{name}", b"x")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: driver.delete("race/s"), range(8)))
    assert True in results
    assert driver.stat("race/s/data") is None and list(driver.list("race")) == []
    assert driver.delete("race/s") is False


def test_touch_renews_the_age(driver: StorageDriver) -> None:
    """Garbage collection spares young blobs; a blob an upload found already stored is renewed."""
    driver.put_content("aged/data", b"old bytes")
    before = driver.stat("aged/data")
    assert before is not None
    time.sleep(1.2)  # S3 keeps Last-Modified to the second
    driver.touch("aged/data")
    after = driver.stat("aged/data")
    assert after is not None and after.modified_at > before.modified_at and after.size == before.size
    assert driver.get_content("aged/data") == b"old bytes"


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
def test_unsafe_keys_are_refused(driver: StorageDriver, backend: StorageDriver, key: str) -> None:
    for refusing in (driver, backend):  # the wrapper, and the backend on its own as a second line
        with pytest.raises(ValueError):
            refusing.put_content(key, b"x")


def test_not_found_follows_the_contract(driver: StorageDriver) -> None:
    assert driver.stat("nothing/here") is None
    assert driver.delete("nothing/here") is False
    for call in (lambda: driver.get_content("nothing/here"), lambda: driver.reader("nothing/here"),
                 lambda: driver.move("nothing/here", "elsewhere/x"), lambda: driver.touch("nothing/here")):
        with pytest.raises(FileNotFoundError):
            call()
