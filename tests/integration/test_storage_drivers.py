"""The one driver test suite every storage backend must pass, run as the blob store uses a driver:
behind base.CheckedDriver (the backend's own checks are tested too, without it)."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from services.blobstore.storage.base import CheckedDriver, StorageDriver, UploadBusyError
from services.blobstore.storage.filesystem import FilesystemDriver
from services.blobstore.storage.s3 import S3Config, S3Driver
from tests.support.s3 import S3Server


@pytest.fixture(params=["filesystem", "seaweedfs", "minio"])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[StorageDriver]:
    if request.param == "filesystem":
        yield FilesystemDriver(tmp_path / "root")
        return
    server = request.getfixturevalue(request.param)
    env = server.env()
    yield S3Driver(S3Config(endpoint=server.endpoint, bucket=env["WHARF_S3_BUCKET"], access_key=server.access_key,
                            secret_key=server.secret_key, prefix="tests"))


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


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_filesystem_unaligned_appends(tmp_path: pathlib.Path, where: str) -> None:
    """Direct I/O writes whole blocks; every odd size and resume point must still give the exact bytes.

    On disk the writer uses O_DIRECT; tmpfs (/dev/shm) refuses it on older kernels, so the
    same sequence also runs through the page-cache fallback there.
    """
    if where == "tmpfs":
        shm = pathlib.Path("/dev/shm")
        if not shm.is_dir():
            pytest.skip("no /dev/shm on this machine")
        tmp_path = pathlib.Path(tempfile.mkdtemp(dir=shm))
    try:
        driver = FilesystemDriver(tmp_path / "root")
        rng = random.Random(7)
        sizes = [1, 4095, 1, 4096, 4097, 5 * 1024 * 1024 + 3, 0, 17, 4 * 1024 * 1024, 8191, 2]
        expected = bytearray()
        for size in sizes:
            with driver.writer("odd/data", append=True) as w:
                assert w.size == len(expected)
                data = rng.randbytes(size)
                w.write(data[: size // 3])
                w.write(data[size // 3:])
                expected += data
            stat = driver.stat("odd/data")
            assert stat is not None and stat.size == len(expected)
        w = driver.writer("odd/data", append=True)
        w.commit()
        w.close()
        with driver.reader("odd/data") as r:
            assert r.read() == bytes(expected)
    finally:
        if where == "tmpfs":
            shutil.rmtree(tmp_path, ignore_errors=True)


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


def test_s3_sweep_aborts_unrecorded_multipart_uploads(seaweedfs: S3Server) -> None:
    """A crash between creating a multipart upload and saving its state leaves an upload no key
    refers to; the janitor's sweep aborts it once it is older than the session lifetime.

    (MinIO lists multipart uploads only for an exact object name, so the sweep finds nothing
    there; MinIO expires such uploads itself, after its api.stale_uploads_expiry.)"""
    s3_server = seaweedfs
    env = s3_server.env()
    driver = S3Driver(S3Config(endpoint=s3_server.endpoint, bucket=env["WHARF_S3_BUCKET"],
                               access_key=s3_server.access_key, secret_key=s3_server.secret_key, prefix="sweep"))
    driver._create_multipart("uploads/orphan/data")
    assert driver.sweep(older_than=time.time() - 3600) == 0  # too young
    assert driver.sweep(older_than=time.time() + 60) == 1
    assert driver.sweep(older_than=time.time() + 60) == 0


def test_filesystem_writers_beyond_the_buffer_pool_write_through_the_page_cache(tmp_path: pathlib.Path) -> None:
    """Direct-write buffers come from a bounded pool: with more writers open than pairs in it, the
    rest write through the page cache, every file comes out byte for byte, and the buffers of
    closed writers are reused rather than allocated again (memory stays flat)."""
    from services.blobstore.storage import filesystem

    driver = FilesystemDriver(tmp_path / "store")
    count = filesystem._DIRECT_BUFFER_PAIRS + 8
    payloads = [random.Random(i).randbytes(3 * 1024 * 1024 + i) for i in range(count)]
    writers = [driver.writer(f"uploads/u{i}/data", append=False) for i in range(count)]
    direct = [w for w in writers if w._direct]  # type: ignore[attr-defined]
    if not direct and not filesystem._BUFFERS._free and filesystem._BUFFERS._left == filesystem._DIRECT_BUFFER_PAIRS:
        pytest.skip("this filesystem refuses O_DIRECT: every writer uses the page cache anyway")
    assert len(direct) <= filesystem._DIRECT_BUFFER_PAIRS
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pair: (pair[0].write(pair[1]), pair[0].close()), zip(writers, payloads, strict=True)))
    for i, data in enumerate(payloads):
        assert driver.get_content(f"uploads/u{i}/data") == data
    again = driver.writer("uploads/again/data", append=False)
    assert again._direct  # type: ignore[attr-defined]
    assert filesystem._BUFFERS._left >= 0
    again.cancel()
