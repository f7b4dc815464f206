"""BlobReader: the page-cache read an event loop may make (services/blobstore/blobs.py) gives the
same bytes as the read in a thread, from the same offset, and declines what it cannot do."""

from __future__ import annotations

import io
import os
import pathlib

from services.blobstore.blobs import BlobReader


def test_cached_and_threaded_reads_interleave_over_the_same_bytes(tmp_path: pathlib.Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    path.read_bytes()  # in the page cache
    handle = open(path, "rb")  # noqa: SIM115 - the reader closes it
    handle.seek(1000)
    reader = BlobReader(handle, 250_000)  # from 1,000, 250,000 bytes
    parts: list[bytes] = []
    for step in range(100):
        cached = reader.next_cached(70_000) if step % 2 else None
        part = bytes(cached) if cached is not None else reader.next_chunk(70_000)
        if not part:
            break
        parts.append(part)
    reader.close()
    assert b"".join(parts) == data[1000:251_000]
    assert reader.next_chunk(10) == b"" and reader.next_cached(10) == b""


def test_a_stream_is_never_read_on_the_loop() -> None:
    reader = BlobReader(io.BytesIO(b"abcdef"), 4)  # an object store's response, say
    assert reader.next_cached(3) is None
    assert reader.next_chunk(3) == b"abc"
    assert reader.next_chunk(3) == b"d"
    assert reader.next_chunk(3) == b""
