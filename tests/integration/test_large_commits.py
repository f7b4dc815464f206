"""Committing an upload takes as long as the blob is large: it is not held to a small call's deadline.

A commit hashes the whole session again when its running hash is not at hand: always for a
sha512 digest (the blob store keeps a running sha256 only), and for a session appended to by
another blob-store replica or before a restart. Under the gateway's unary deadline (10 s by
default), a sha512 push of more than ~4 GB answered 503 every time, and the client's retry
found the session ended by the commit that had gone on in the blob store. Here the unary
deadline is made far shorter than the re-hash of a 512 MiB blob instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
import requests

from tests.support.stack import RunningStack

PIECE = 32 * 1024 * 1024
PIECES = 16  # 512 MiB: ~1.3 s of sha512 here, against a unary deadline of 0.3 s


@pytest.fixture(scope="module")
def short_deadline(start_stack: Callable[..., RunningStack]) -> RunningStack:
    return start_stack(env={"WHARF_RPC_TIMEOUT": "0.3", "WHARF_GATEWAY_WORKERS": "1"})


def _pieces() -> list[bytes]:
    base = os.urandom(PIECE)
    return [i.to_bytes(8, "big") + base[8:] for i in range(PIECES)]


@pytest.mark.parametrize("algorithm", ["sha512", "sha256"])
def test_a_commit_that_rehashes_a_large_session_is_not_cut_off(short_deadline: RunningStack,
                                                              algorithm: str) -> None:
    url = short_deadline.url
    pieces = _pieces()
    hasher = hashlib.new(algorithm)
    with requests.Session() as http:
        started = http.post(f"{url}/v2/big/{algorithm}/blobs/uploads/", timeout=30)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        for piece in pieces:
            hasher.update(piece)
            sent = http.patch(f"{url}{location}", data=piece, headers={"Content-Type": "application/octet-stream"},
                              timeout=120)
            assert sent.status_code == 202, sent.text
            location = sent.headers["Location"]
        digest = f"{algorithm}:{hasher.hexdigest()}"
        separator = "&" if "?" in location else "?"
        done = http.put(f"{url}{location}{separator}digest={digest}", timeout=300)
        assert done.status_code == 201, done.text
        head = http.head(f"{url}/v2/big/{algorithm}/blobs/{digest}", timeout=30)
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) == PIECE * PIECES
