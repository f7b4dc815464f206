"""A hostile review of the pull-through cache: an upstream that answers like a registry but lies.

- A manifest the upstream sends that the registry cannot take (a media type it does not know,
  not JSON, nested past the parser) is the upstream's fault: ``502`` naming it, never the
  ``400 MANIFEST_INVALID`` a push gets (that told the puller its own request was wrong).
- A token service answering tokens of about a megabyte for every scope: each was cached, up to
  1,024 of them (a blob store grew 87 -> 442 MB over 400 repositories); such a token is refused.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from services.mirror import upstream as upstream_module
from services.mirror.upstream import UpstreamClient, UpstreamInvalid, UpstreamNotFound
from tests.support.pusher import OCI_MANIFEST
from tests.support.stack import RunningStack


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_EVIL_TYPE = "application/x-evil"
# What the upstream sends for each repository: (Content-Type, body), digests that match.
_MANIFESTS = {
    "badtype/app": (_EVIL_TYPE, json.dumps({"schemaVersion": 2, "mediaType": _EVIL_TYPE}).encode()),
    "html/app": (OCI_MANIFEST, b"<html>hello</html>"),
    "nested/app": (OCI_MANIFEST, b"[" * 100_000 + b"]" * 100_000),
}


class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        if self.path.startswith("/token"):
            return self._answer(200, "application/json", json.dumps({"token": "t" * server.token_size}).encode())
        if self.headers.get("Authorization") is None and server.token_size:
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{self.headers["Host"]}/token",service="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        repository = self.path.removeprefix("/v2/").split("/manifests/")[0]
        if repository not in _MANIFESTS:
            return self._answer(404, "application/json", b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        media_type, body = _MANIFESTS[repository]
        return self._answer(200, media_type, body, {"Docker-Content-Digest": _sha256(body)})

    do_HEAD = do_GET

    def _answer(self, status: int, media_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**(headers or {}), "Content-Type": media_type, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    token_size = 0  # 0: no authentication asked


@pytest.fixture(scope="module")
def hostile() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., RunningStack], hostile: _Server,
          tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
    mirrors = tmp_path_factory.mktemp("mirrors") / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://127.0.0.1:{hostile.server_address[1]}\n"
                       "    insecure: true\n    tag_ttl: 0s\n")
    return start_stack(env={"WHARF_MIRRORS_FILE": str(pathlib.Path(mirrors))})


@pytest.mark.parametrize("repository", sorted(_MANIFESTS))
@pytest.mark.parametrize("reference", ["v1", "digest"])
def test_a_manifest_the_registry_cannot_take_is_the_upstreams_502(stack: RunningStack, repository: str,
                                                                  reference: str) -> None:
    if reference == "digest":
        reference = _sha256(_MANIFESTS[repository][1])
    got = requests.get(f"{stack.url}/v2/up.example/{repository}/manifests/{reference}", timeout=60,
                       headers={"Accept": f"{OCI_MANIFEST}, {_EVIL_TYPE}"})
    assert got.status_code == 502, (got.status_code, got.text[:300])
    assert got.headers["Content-Type"].startswith("application/json")
    error = got.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE" and "invalid manifest" in error["message"], error
    assert error["detail"]["upstream"].startswith("127.0.0.1:")


def test_a_token_too_long_for_a_header_is_refused_and_never_cached(hostile: _Server) -> None:
    hostile.token_size = upstream_module.MAX_TOKEN_BYTES + 1
    try:
        client = UpstreamClient(f"http://127.0.0.1:{hostile.server_address[1]}", insecure=True)
        for index in range(3):
            with pytest.raises(UpstreamInvalid, match="no usable token"):
                client.manifest(f"team/app{index}", "v1", head=True)
        assert client._tokens == {}
        hostile.token_size = upstream_module.MAX_TOKEN_BYTES  # the longest taken
        with pytest.raises(UpstreamNotFound):
            client.manifest("team/app", "v1", head=True)
        assert [len(token) for token, _ in client._tokens.values()] == [upstream_module.MAX_TOKEN_BYTES]
    finally:
        hostile.token_size = 0
