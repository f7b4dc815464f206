"""A blob sent from its file (sendfile, `make run`'s way) is found without asking the blob store
once a worker has found it (services/api/views/blobs.py ``_known_files``), and that changes
nothing about who may read it or what happens once the file is gone."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest
import requests

from services.common import digests
from tests.support.stack import RunningStack


@pytest.fixture(scope="module")
def one_worker(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """One gateway worker, so that every request meets the same worker's memory of paths."""
    return start_stack(env={"WHARF_GATEWAY_WORKERS": "1"})


def _push(url: str, name: str, data: bytes) -> str:
    digest = digests.of(data)
    answer = requests.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data, timeout=30)
    assert answer.status_code == 201, answer.text
    return digest


def _file_of(data_dir: pathlib.Path, digest: str) -> pathlib.Path:
    encoded = digest.split(":", 1)[1]
    found = [pathlib.Path(root) / name for root, _, names in os.walk(data_dir) for name in names
             if pathlib.Path(root).name == encoded and name == "data"]
    assert len(found) == 1, found
    return found[0]


def test_a_known_file_serves_whole_and_ranged_reads(one_worker: RunningStack) -> None:
    data = os.urandom(300_000)
    digest = _push(one_worker.url, "files/a", data)
    for _ in range(3):  # the first asks the blob store where the file is; the others know
        whole = requests.get(f"{one_worker.url}/v2/files/a/blobs/{digest}", timeout=30)
        assert whole.status_code == 200 and whole.content == data
        ranged = requests.get(f"{one_worker.url}/v2/files/a/blobs/{digest}", headers={"Range": "bytes=1000-1999"},
                              timeout=30)
        assert ranged.status_code == 206 and ranged.content == data[1000:2000]


def test_a_known_file_is_still_served_only_where_the_blob_is_linked(one_worker: RunningStack) -> None:
    data = os.urandom(5000)
    digest = _push(one_worker.url, "files/linked", data)
    assert requests.get(f"{one_worker.url}/v2/files/linked/blobs/{digest}", timeout=30).content == data
    other = requests.get(f"{one_worker.url}/v2/files/other/blobs/{digest}", timeout=30)
    assert other.status_code == 404 and other.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert requests.delete(f"{one_worker.url}/v2/files/linked/blobs/{digest}", timeout=30).status_code == 202
    gone = requests.get(f"{one_worker.url}/v2/files/linked/blobs/{digest}", timeout=30)
    assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_a_known_file_that_is_gone_is_asked_for_again(one_worker: RunningStack) -> None:
    data = os.urandom(5000)
    digest = _push(one_worker.url, "files/gone", data)
    assert requests.get(f"{one_worker.url}/v2/files/gone/blobs/{digest}", timeout=30).content == data
    _file_of(one_worker.data_dir, digest).unlink()  # as a collection removes it
    missing = requests.get(f"{one_worker.url}/v2/files/gone/blobs/{digest}", timeout=30)
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN", missing.text
    _push(one_worker.url, "files/gone", data)  # stored again: served again
    again = requests.get(f"{one_worker.url}/v2/files/gone/blobs/{digest}", timeout=30)
    assert again.status_code == 200 and again.content == data
