"""Blob GETs answered with a redirect (Wharf on S3 with presigned URLs) are followed, and still verified."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import requests

from tests.e2e.client.conftest import Registry, Result
from tests.support.s3 import S3Server
from tests.support.stack import RunningStack
from tests.unit.client.builders import oci_layout

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def redirecting(start_stack: Callable[..., RunningStack], seaweedfs: S3Server) -> Registry:
    stack = start_stack(env={**seaweedfs.env(), "WHARF_S3_REDIRECT": "true"})
    return Registry("wharf-s3-redirect", stack.host)


def test_pull_follows_blob_redirects(redirecting: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src", platforms=("linux/amd64",))
    ref = redirecting.repo() + ":v1"
    wharf_cli("push", str(built.path), ref)
    layer = next(d for d, data in built.objects.items() if data[:2] == b"\x1f\x8b")
    name = ref.split("/", 1)[1].rsplit(":", 1)[0]
    answer = requests.get(f"http://{redirecting.host}/v2/{name}/blobs/{layer}", allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 307), "the registry should redirect blob GETs in this mode"
    wharf_cli("pull", ref, str(tmp_path / "out"))
    pulled = {"sha256:" + p.name: p.read_bytes() for p in (tmp_path / "out" / "blobs" / "sha256").iterdir()}
    assert pulled == built.objects
    assert wharf_cli("blob", "get", f"{ref.rsplit(':', 1)[0]}@{layer}").out == built.objects[layer]
