"""The storage-driver suite (services/blobstore/storage/testsuite.py) run against each of Wharf's
backends, plus what is particular to each."""

from __future__ import annotations

import concurrent.futures
import pathlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from services.blobstore.storage.base import StorageDriver
from services.blobstore.storage.filesystem import FilesystemDriver
from services.blobstore.storage.s3 import S3Config, S3Driver
from services.blobstore.storage.testsuite import *  # noqa: F403 - the suite's tests and fixtures
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
