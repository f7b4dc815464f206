"""S3 upload sessions under expiry and cancellation, against a real SeaweedFS (a hostile review).

MinIO lists multipart uploads only per exact object name, so its sweep finds none (it expires
stale uploads itself); these run on SeaweedFS, which lists them all as AWS does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from services.blobstore import layout
from services.blobstore.blobs import BlobService
from services.blobstore.storage import s3 as s3_driver
from services.blobstore.storage.base import StorageError
from services.blobstore.storage.s3 import S3Config, S3Driver
from services.blobstore.storage.s3_session import PART_TARGET
from services.common import digests
from services.common.errors import RegistryError
from tests.support.s3 import S3Server


def _service(server: S3Server, upload_ttl: int) -> BlobService:
    env = server.env()
    driver = S3Driver(S3Config(endpoint=server.endpoint, bucket=env["WHARF_S3_BUCKET"], access_key=server.access_key,
                               secret_key=server.secret_key, prefix="review"))
    return BlobService(driver, upload_ttl=upload_ttl)


def test_the_janitor_keeps_the_multipart_upload_of_a_session_still_in_use(seaweedfs: S3Server) -> None:
    """A session is idle-expired: one appended to within the session lifetime lives on, however
    long ago its multipart upload started (a large push over a slow link, a session resumed).
    The sweep aborted every multipart upload older than the lifetime, recorded or not: the
    session's next append and its commit failed with 503 for good and every part was lost
    (seen on a stack with WHARF_UPLOAD_TTL=15: a push of a 9 MiB PATCH every 6 s broke at 20 s)."""
    service = _service(seaweedfs, upload_ttl=2)
    first, second = os.urandom(PART_TARGET), os.urandom(1000)
    upload = service.create_upload("repo")
    service.append(upload.upload_id, "repo", 0, [first])  # starts the multipart upload with its first part
    time.sleep(3.5)  # the multipart upload is now older than the session lifetime...
    service.append(upload.upload_id, "repo", len(first), [second])  # ...but the session is not idle
    assert service.expire_uploads() == 0
    digest = digests.of(first + second)
    assert service.commit(upload.upload_id, "repo", digest).size == len(first) + len(second)
    assert digests.of(service._driver.get_content(layout.blob_key(digest))) == digest


def test_the_janitor_still_aborts_the_multipart_upload_of_an_idle_session(seaweedfs: S3Server) -> None:
    """The other side: a multipart upload whose session state stopped changing longer than the
    lifetime ago (a fill whose leader died, say, which no session expiry removes) is aborted."""
    service = _service(seaweedfs, upload_ttl=3600)
    driver = service._driver
    writer = driver.writer("fills/sha256/abandoned/data", append=False)
    writer.write(os.urandom(PART_TARGET))
    writer.close()
    assert driver.sweep(older_than=time.time() - 3600) == 0
    assert driver.sweep(older_than=time.time() + 60) == 1


def test_a_cancel_under_a_running_append_is_upload_unknown_not_unavailable(seaweedfs: S3Server) -> None:
    """`DELETE` of an upload while its `PATCH` streams: the cancel aborts the multipart upload,
    and the append's next part found it gone. That S3 error reached the client as `503
    UNAVAILABLE` ("retry later", which can never succeed); it is `BLOB_UPLOAD_UNKNOWN`."""
    service = _service(seaweedfs, upload_ttl=3600)
    upload = service.create_upload("repo")
    append = service.open_append(upload.upload_id, "repo", 0)
    append.write(os.urandom(PART_TARGET))  # a part is stored: the multipart upload exists
    service.cancel(upload.upload_id, "repo")
    with pytest.raises(RegistryError) as refused:
        append.write(os.urandom(PART_TARGET))
    assert refused.value.code == "BLOB_UPLOAD_UNKNOWN"
    append.abort(refused.value)
    with pytest.raises(RegistryError) as gone:
        service.get_upload(upload.upload_id, "repo")
    assert gone.value.code == "BLOB_UPLOAD_UNKNOWN"


class _DrippingProxy:
    """A TCP proxy in front of the S3 server; once ``drip`` is set, what the server answers reaches
    the blob store a byte every 0.5 s, each byte well within urllib3's read timeout (a degraded
    server, or a half-broken connection through a middlebox)."""

    def __init__(self, upstream: str) -> None:
        self.drip = threading.Event()
        self._upstream = upstream.rsplit(":", 1)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((self._upstream[0], int(self._upstream[1])))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if answers and self.drip.is_set():
                    for i in range(len(data)):
                        sink.sendall(data[i:i + 1])
                        time.sleep(0.5)
                else:
                    sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def test_a_dripping_s3_server_holds_a_storage_thread_no_longer_than_a_requests_deadline(
        seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3's read timeout bounds each wait for a byte, not a request: an S3 answer dripped a
    byte at a time held the blob store's thread for as long as the drip went on (a stack with 8
    storage threads and 12 pulls of a dripping S3: every push and pull `503` for 4 minutes after
    S3 was healthy again; now 60 s, CALL_SECONDS). Here the deadline is 2 s."""
    monkeypatch.setattr(s3_driver, "CALL_SECONDS", 2.0)
    proxy = _DrippingProxy(seaweedfs.endpoint)
    try:
        env = seaweedfs.env()
        driver = S3Driver(S3Config(endpoint=proxy.endpoint, bucket=env["WHARF_S3_BUCKET"],
                                   access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key, prefix="drip"))
        driver.put_content("blobs/x/data", os.urandom(32 * 1024 * 1024))  # more than socket buffers hold
        download = driver.reader("blobs/x/data")
        assert len(download.read(1000)) == 1000
        proxy.drip.set()
        for step in (lambda: driver.stat("blobs/x/data"), lambda: download.read(32 * 1024 * 1024),
                     lambda: driver.delete("uploads/x")):
            outcome: list[BaseException | object] = []

            def run(step: Callable[[], object] = step, outcome: list[BaseException | object] = outcome) -> None:
                try:
                    outcome.append(step())
                except BaseException as exc:  # reported by the assertion below
                    outcome.append(exc)

            started = time.monotonic()
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "the thread was still held by the dripping answer after 30 s"
            assert isinstance(outcome[0], StorageError), outcome
            assert time.monotonic() - started < 10
        download.close()
    finally:
        proxy.drip.clear()
        proxy.close()
