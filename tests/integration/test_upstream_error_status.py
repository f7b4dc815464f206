"""A mirror's upstream that answers wrong content: the gateway says 502 (a wrong answer, retrying will
not help), as the blob store decided, not the 503 of the error code's default. The status crosses
the blob store's gRPC hop in trailing metadata (services/common/errors.py)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.support.pusher import OCI_MANIFEST
from tests.support.stack import RunningStack

# Over a megabyte: the fill streams it in several chunks, so the mismatch is found after the first.
LAYER = os.urandom(1024 * 1024 + 4321)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(layer: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": _sha256(b"{}"), "size": 2},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha256(layer),
                                   "size": len(layer)}]}).encode()


MANIFEST = _manifest(LAYER)
OTHER = _manifest(b"other layer")


class _Hostile(BaseHTTPRequestHandler):
    """Every manifest is MANIFEST under OTHER's digest; every blob is LAYER with its first byte flipped."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if "/manifests/" in self.path:
            self._answer(MANIFEST, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": _sha256(OTHER)})
        elif "/blobs/" in self.path:
            self._answer(bytes([LAYER[0] ^ 1]) + LAYER[1:], {"Content-Type": "application/octet-stream"})
        else:
            self._answer(b"{}", {"Content-Type": "application/json"})

    do_HEAD = do_GET

    def _answer(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., RunningStack], hostile: str,
          tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
    mirrors = tmp_path_factory.mktemp("mirrors") / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://{hostile}\n    insecure: true\n"
                       "    anonymous: true\n    tag_ttl: 0s\n")
    return start_stack(env={"WHARF_MIRRORS_FILE": str(pathlib.Path(mirrors))})


def _assert_bad_gateway(response: requests.Response, body: bool = True) -> None:
    assert response.status_code == 502, (response.status_code, response.text[:300])
    if body:
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"


def test_a_manifest_whose_digest_header_mismatches_its_body_is_502(stack: RunningStack) -> None:
    got = requests.get(f"{stack.url}/v2/up.example/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST},
                       timeout=60)
    _assert_bad_gateway(got)


def test_a_blob_whose_bytes_mismatch_its_digest_is_502(stack: RunningStack) -> None:
    """HEAD fills the whole blob before it answers: the mismatch, found after the first chunk,
    comes back as the blob store's 502 (a raw gRPC error here was a 500)."""
    head = requests.head(f"{stack.url}/v2/up.example/team/app/blobs/{_sha256(LAYER)}", timeout=60)
    _assert_bad_gateway(head, body=False)
