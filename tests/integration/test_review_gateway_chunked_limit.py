"""WHARF_MAX_BODY_BYTES holds for chunked bodies too (hostile review of the gateway's wire).

A ``Content-Length`` over the limit is refused before a byte is read, and a single chunk over
it as its size line is read; a chunked body of many small chunks had no bound at all: with a
1 MiB limit, a 3 MiB ``PATCH`` in 64 KiB chunks was taken (``202``, ``Range: 0-3145727``).
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support.stack import RunningStack

LIMIT = 1024 * 1024
PIECE = 64 * 1024


@pytest.fixture(scope="module")
def small_bodies(start_stack: Callable[..., RunningStack]) -> RunningStack:
    return start_stack(env={"WHARF_GATEWAY_WORKERS": "1", "WHARF_MAX_BODY_BYTES": str(LIMIT)})


def _pieces(data: bytes) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked, a chunk per piece."""
    for start in range(0, len(data), PIECE):
        yield data[start:start + PIECE]


def _upload(url: str, name: str) -> str:
    started = requests.post(f"{url}/v2/{name}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    return location if location.startswith("http") else url + location


def test_a_chunked_patch_past_the_body_limit_is_refused(small_bodies: RunningStack) -> None:
    data = b"z" * (3 * LIMIT)
    answer = requests.patch(_upload(small_bodies.url, "chunked/over"), data=_pieces(data),
                            headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert answer.status_code == 400, (answer.status_code, answer.headers.get("Range"))
    assert answer.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert "more than the largest body accepted" in answer.json()["errors"][0]["message"]


def test_a_chunked_monolithic_upload_past_the_body_limit_stores_nothing(small_bodies: RunningStack) -> None:
    data = b"y" * (2 * LIMIT)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = small_bodies.url
    answer = requests.post(f"{url}/v2/chunked/mono/blobs/uploads/?digest={digest}", data=_pieces(data), timeout=30)
    assert answer.status_code == 400, answer.status_code
    assert requests.head(f"{url}/v2/chunked/mono/blobs/{digest}", timeout=10).status_code == 404


def test_chunked_bodies_up_to_the_limit_are_taken(small_bodies: RunningStack) -> None:
    data = b"x" * LIMIT  # exactly the limit, in 16 chunks
    answer = requests.patch(_upload(small_bodies.url, "chunked/at"), data=_pieces(data),
                            headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Range"] == f"0-{LIMIT - 1}"
    # A second body on a new request is counted from zero (the count is per request).
    again = requests.patch(answer.headers["Location"] if answer.headers["Location"].startswith("http")
                           else small_bodies.url + answer.headers["Location"], data=_pieces(b"x" * PIECE),
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Range": f"{LIMIT}-{LIMIT + PIECE - 1}"}, timeout=30)
    assert again.status_code == 202, again.text


def test_one_chunk_past_the_limit_is_refused_as_its_size_line_arrives(small_bodies: RunningStack) -> None:
    with socket.create_connection(("127.0.0.1", small_bodies.port), timeout=10) as sock:
        sock.sendall(b"PATCH " + _upload(small_bodies.url, "chunked/huge").split(small_bodies.host, 1)[1].encode()
                     + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 2**64 + b"abc")
        data = b""
        while piece := sock.recv(65536):  # answered and closed without waiting for the chunk
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body)["errors"][0]["message"] == ("the request body could not be read: the chunks add up to "
                                                         "more than the largest body accepted")
