"""The gateway's strict head reader (services/api/quick_heads.py) on the wire, against a real stack.

Read-cache hits (a blob HEAD, a manifest GET or HEAD) are answered from heads the reader takes
itself; every other head goes to gunicorn's parser unchanged. Over raw sockets: hits answer as
the full path does and keep (or close) the connection as HTTP says; pipelined requests, hits and
misses and bodies mixed, are answered in order; heads gunicorn refuses get its error at once and
never a cached 200; a caller without the right token is never answered from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from services.common import mediatypes
from tests.security.conftest import ADMIN_PASSWORD, PASSWORDS, admin, bearer, push_blob, push_image, token
from tests.support.stack import RunningStack

NAME = "a/quick-heads"
LAYER = f"layer of {NAME}".encode()  # what push_image stores as the image's one layer


@dataclasses.dataclass
class Registry:
    stack: RunningStack
    owner: str  # the Authorization value of the repository's owner (pull and push)
    manifest: bytes
    manifest_digest: str
    layer_digest: str

    @property
    def manifest_path(self) -> str:
        return f"/v2/{NAME}/manifests/v1"

    @property
    def blob_path(self) -> str:
        return f"/v2/{NAME}/blobs/{self.layer_digest}"


@pytest.fixture(scope="module")
def registry(start_stack: Callable[..., RunningStack]) -> Registry:
    """A token-mode stack with one gateway worker (so that the warmed read cache is the one that answers)."""
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD, "WHARF_BCRYPT_ROUNDS": "4",
                             "WHARF_GATEWAY_WORKERS": "1"})
    for user in ("a", "b"):
        admin(stack, "user", "add", user, "--password-stdin", stdin=PASSWORDS[user] + "\n")
    digest = push_image(stack, "a", NAME)
    owner = bearer(token(stack, "a", f"repository:{NAME}:pull,push"))
    # Warm the read cache through the normal path.
    manifest = requests.get(f"{stack.url}/v2/{NAME}/manifests/v1", timeout=10,
                            headers={**owner, "Accept": mediatypes.OCI_MANIFEST})
    assert manifest.status_code == 200 and manifest.headers["Docker-Content-Digest"] == digest
    layer_digest = manifest.json()["layers"][0]["digest"]
    assert layer_digest == "sha256:" + hashlib.sha256(LAYER).hexdigest()
    for _ in range(2):
        blob = requests.head(f"{stack.url}/v2/{NAME}/blobs/{layer_digest}", headers=owner, timeout=10)
        assert blob.status_code == 200
        assert requests.get(f"{stack.url}/v2/{NAME}/manifests/v1", timeout=10,
                            headers={**owner, "Accept": mediatypes.OCI_MANIFEST}).status_code == 200
    return Registry(stack, owner["Authorization"], manifest.content, digest, layer_digest)


@dataclasses.dataclass
class Reply:
    version: str
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Connection:
    """A raw client connection that reads HTTP/1.1 responses one at a time."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; had {self.buffer[:200]!r}")
        self.buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._more()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self, method: str = "GET") -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status = status_line.split(" ")[:2]
        headers: dict[str, str] = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, (name, head)
            headers[name.lower()] = value.strip()
        body = b""
        if method != "HEAD" and int(status) not in (204, 304):
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while size := int(self._line().split(b";")[0], 16):
                    body += self._take(size)
                    assert self._take(2) == b"\r\n"
                while self._line():
                    pass
            else:
                body = self._take(int(headers.get("content-length", "0")))
        return Reply(version, int(status), headers, body)

    def ended(self, within: float = 2.0) -> bool:
        """Whether the server closes the connection (with nothing more to read) within ``within`` seconds."""
        if self.buffer:
            return False
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def quiet(self, within: float = 0.3) -> bool:
        """Whether nothing more arrives (and the connection stays open) for ``within`` seconds."""
        if self.buffer:
            return False
        self.sock.settimeout(within)
        try:
            self.sock.recv(1)
        except TimeoutError:
            return True
        return False


def head(method: str, path: str, *headers: str, version: str = "HTTP/1.1") -> bytes:
    return ("\r\n".join([f"{method} {path} {version}", "Host: registry", *headers]) + "\r\n\r\n").encode("latin-1")


def _accept() -> str:
    return f"Accept: {mediatypes.OCI_MANIFEST}"


@pytest.fixture()
def connect(registry: Registry) -> Iterator[Callable[[], Connection]]:
    opened: list[Connection] = []

    def open_one() -> Connection:
        opened.append(Connection(registry.stack.port))
        return opened[-1]

    yield open_one
    for conn in opened:
        conn.sock.close()


def assert_blob_head(reply: Reply, registry: Registry, version: str = "HTTP/1.1") -> None:
    assert (reply.version, reply.status) == (version, 200), reply
    assert reply.headers["content-length"] == str(len(LAYER))
    assert reply.headers["docker-content-digest"] == registry.layer_digest
    assert reply.body == b""


def assert_manifest(reply: Reply, registry: Registry, method: str = "GET", version: str = "HTTP/1.1") -> None:
    assert (reply.version, reply.status) == (version, 200), reply
    assert reply.headers["content-length"] == str(len(registry.manifest))
    assert reply.headers["docker-content-digest"] == registry.manifest_digest
    assert reply.headers["content-type"] == mediatypes.OCI_MANIFEST
    assert reply.body == (registry.manifest if method == "GET" else b"")
    if method == "GET":
        assert "sha256:" + hashlib.sha256(reply.body).hexdigest() == registry.manifest_digest


def test_hits_answer_and_keep_the_connection_open(registry: Registry, connect: Callable[[], Connection]) -> None:
    auth = f"Authorization: {registry.owner}"
    conn = connect()
    conn.send(head("HEAD", registry.blob_path, auth))
    blob = conn.reply("HEAD")
    assert_blob_head(blob, registry)
    assert blob.headers["connection"] == "keep-alive" and len(blob.headers["x-request-id"]) == 32
    assert conn.quiet(0.1)  # a HEAD's answer has no body, whatever its Content-Length
    conn.send(head("GET", registry.manifest_path, auth, _accept()))
    manifest = conn.reply()
    assert_manifest(manifest, registry)
    assert manifest.headers["connection"] == "keep-alive"
    conn.send(head("HEAD", registry.manifest_path, f"authorization: {registry.owner}", _accept(),
                   "X-Request-Id: trace-42"))
    again = conn.reply("HEAD")
    assert_manifest(again, registry, "HEAD")
    assert again.headers["x-request-id"] == "trace-42"
    conn.send(head("GET", registry.manifest_path, auth, _accept(), "Connection: keep-alive"))
    assert_manifest(conn.reply(), registry)
    assert conn.quiet()


def test_http_1_0_closes_unless_kept_alive(registry: Registry, connect: Callable[[], Connection]) -> None:
    auth = f"Authorization: {registry.owner}"
    conn = connect()
    conn.send(head("HEAD", registry.blob_path, auth, version="HTTP/1.0"))
    reply = conn.reply("HEAD")
    assert_blob_head(reply, registry, "HTTP/1.0")
    assert reply.headers["connection"] == "close"
    assert conn.ended()

    kept = connect()
    kept.send(head("GET", registry.manifest_path, auth, _accept(), "Connection: keep-alive", version="HTTP/1.0"))
    reply = kept.reply()
    assert_manifest(reply, registry, version="HTTP/1.0")
    assert reply.headers["connection"] == "keep-alive"
    kept.send(head("HEAD", registry.blob_path, auth, version="HTTP/1.0"))
    assert_blob_head(kept.reply("HEAD"), registry, "HTTP/1.0")
    assert kept.ended()


@pytest.mark.parametrize("method,path", [("HEAD", "blob"), ("GET", "manifest"), ("HEAD", "manifest")])
def test_connection_close_closes(registry: Registry, connect: Callable[[], Connection], method: str,
                                 path: str) -> None:
    conn = connect()
    target = registry.blob_path if path == "blob" else registry.manifest_path
    conn.send(head(method, target, f"Authorization: {registry.owner}", _accept(), "Connection: close")
              + head(method, target, f"Authorization: {registry.owner}", _accept()))  # never read
    reply = conn.reply(method)
    if path == "blob":
        assert_blob_head(reply, registry)
    else:
        assert_manifest(reply, registry, method)
    assert reply.headers["connection"] == "close"
    assert conn.ended()


def test_pipelined_hits_and_a_miss_answer_in_order(registry: Registry, connect: Callable[[], Connection]) -> None:
    auth = f"Authorization: {registry.owner}"
    conn = connect()
    conn.send(head("HEAD", registry.blob_path, auth)
              + head("GET", registry.blob_path, auth)  # a blob GET is never a hit: the full path
              + head("HEAD", registry.manifest_path, auth, _accept())
              + head("GET", registry.manifest_path, auth, _accept())
              + head("GET", f"/v2/{NAME}/tags/list", auth))
    assert_blob_head(conn.reply("HEAD"), registry)
    blob = conn.reply()
    assert blob.status == 200 and blob.body == LAYER
    assert_manifest(conn.reply("HEAD"), registry, "HEAD")
    assert_manifest(conn.reply(), registry)
    tags = conn.reply()
    assert tags.status == 200 and b'"v1"' in tags.body
    assert conn.quiet()


def test_a_pipelined_body_is_read_as_a_body(registry: Registry, connect: Callable[[], Connection]) -> None:
    """A monolithic upload between hits, whose body is itself a request head: it is stored, not served."""
    auth = f"Authorization: {registry.owner}"
    data = head("HEAD", registry.blob_path, auth) + head("GET", registry.manifest_path, auth, _accept())
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = connect()
    conn.send(head("HEAD", registry.blob_path, auth)
              + head("POST", f"/v2/{NAME}/blobs/uploads/?digest={digest}", auth, f"Content-Length: {len(data)}",
                     "Content-Type: application/octet-stream") + data
              + head("GET", registry.manifest_path, auth, _accept())
              + head("HEAD", f"/v2/{NAME}/blobs/{digest}", auth))
    assert_blob_head(conn.reply("HEAD"), registry)
    created = conn.reply()
    assert created.status == 201, created
    assert created.headers["docker-content-digest"] == digest
    assert_manifest(conn.reply(), registry)
    stored = conn.reply("HEAD")
    assert stored.status == 200 and stored.headers["content-length"] == str(len(data))
    assert conn.quiet()  # the body's "requests" were never answered
    got = requests.get(f"{registry.stack.url}/v2/{NAME}/blobs/{digest}", headers={"Authorization": registry.owner},
                       timeout=10)
    assert got.content == data


def _hostile(registry: Registry) -> dict[str, tuple[bytes, int]]:
    """Heads for a cached manifest that gunicorn refuses, and its status for each."""
    auth, target = f"Authorization: {registry.owner}", registry.manifest_path
    line = f"GET {target} HTTP/1.1".encode()
    base = f"Host: registry\r\n{auth}\r\n{_accept()}".encode()
    return {
        "two-content-lengths": (head("GET", target, auth, _accept(), "Content-Length: 0", "Content-Length: 0"), 400),
        "chunked-and-length": (head("GET", target, auth, _accept(), "Transfer-Encoding: chunked",
                                    "Content-Length: 5") + b"0\r\n\r\n", 400),
        "gzip-coding": (head("GET", target, auth, _accept(), "Transfer-Encoding: gzip"), 400),
        "unknown-coding": (head("GET", target, auth, _accept(), "Transfer-Encoding: zstd"), 501),
        "obs-fold": (head("GET", target, auth, _accept(), "X-A: b", " folded"), 400),
        "obs-fold-authorization": (head("GET", target, "Authorization: Bearer", f" {registry.owner[7:]}",
                                        _accept()), 400),
        "bare-lf": (line + b"\n" + base.replace(b"\r\n", b"\n") + b"\n\n", 400),
        "bare-lf-in-headers": (line + b"\r\n" + base.replace(b"\r\n", b"\n") + b"\r\n\r\n", 400),
        "nul-in-value": (head("GET", target, auth, _accept(), "X-A: a\x00b"), 400),
        "bare-cr-in-value": (head("GET", target, auth, _accept(), "X-A: a\rb"), 400),
        "del-in-value": (head("GET", target, auth, _accept(), "X-A: a\x7f"), 400),
        "host-twice": (head("GET", target, auth, _accept(), "Host: other"), 400),
        "space-before-colon": (head("GET", target, auth, _accept(), "X-A : b"), 400),
        "expectation": (head("GET", target, auth, _accept(), "Expect: the-unexpected"), 417),
        "lowercase-method": (head("get", target, auth, _accept()), 400),
        "http-2.0": (head("GET", target, auth, _accept(), version="HTTP/2.0"), 400),
        "too-many-fields": (head("GET", target, auth, _accept(), *(f"X-F{i}: v" for i in range(101))), 431),
        "request-line-too-long": (head("GET", target + "?" + "q" * 5000, auth, _accept()), 414),
        "field-too-long": (head("GET", target, auth, _accept(), "X-A: " + "b" * 8200), 431),
    }


HOSTILE = ["two-content-lengths", "chunked-and-length", "gzip-coding", "unknown-coding", "obs-fold",
           "obs-fold-authorization", "bare-lf", "bare-lf-in-headers", "nul-in-value", "bare-cr-in-value",
           "del-in-value", "host-twice", "space-before-colon", "expectation", "lowercase-method", "http-2.0",
           "too-many-fields", "request-line-too-long", "field-too-long"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_heads_get_gunicorns_answer_at_once(registry: Registry, connect: Callable[[], Connection],
                                                    name: str) -> None:
    data, status = _hostile(registry)[name]
    conn = connect()
    started = time.monotonic()
    conn.send(data + head("GET", registry.manifest_path, f"Authorization: {registry.owner}", _accept()))
    reply = conn.reply()
    elapsed = time.monotonic() - started
    assert reply.status == status, reply
    assert reply.headers["connection"] == "close"
    assert elapsed < 1.0, elapsed
    assert conn.ended()  # and the request after it is never answered


def test_underscored_headers_do_not_change_a_hit(registry: Registry, connect: Callable[[], Connection]) -> None:
    """gunicorn drops header names with "_" (an untrusted peer's SCRIPT_NAME too): the answer is the same."""
    auth = f"Authorization: {registry.owner}"
    volatile = {"date", "x-request-id"}
    conn = connect()
    conn.send(head("GET", registry.manifest_path, auth, _accept()))
    plain = conn.reply()
    assert_manifest(plain, registry)
    for extra in ("X_Forwarded_For: 10.9.8.7", "X_Request_Id: forged", "SCRIPT_NAME: /v2", "PATH_INFO: /v2/",
                  "Accept_: application/vnd.docker.distribution.manifest.v2+json"):
        for method in ("GET", "HEAD"):
            conn.send(head(method, registry.manifest_path, auth, _accept(), extra))
            reply = conn.reply(method)
            assert_manifest(reply, registry, method)
            assert reply.headers["x-request-id"] != "forged"
            assert {k: v for k, v in reply.headers.items() if k not in volatile} \
                == {k: v for k, v in plain.headers.items() if k not in volatile}, extra
        conn.send(head("HEAD", registry.blob_path, auth, extra))
        assert_blob_head(conn.reply("HEAD"), registry)
    # Without the token, a token under another name is no token.
    conn.send(head("GET", registry.manifest_path, _accept(), f"Authorization_: {registry.owner}"))
    assert conn.reply().status == 401


def test_a_missing_or_insufficient_token_is_never_answered_from_cache(registry: Registry,
                                                                      connect: Callable[[], Connection]) -> None:
    stack = registry.stack
    refused = {
        "missing": ([], 401),
        "other-user": ([f"Authorization: Bearer {token(stack, 'b', f'repository:{NAME}:pull')}"], 403),
        "other-repository": ([f"Authorization: Bearer {token(stack, 'a', 'repository:a/other:pull')}"], 401),
        "tampered": ([f"Authorization: {registry.owner}x"], 401),
        "not-bearer": ([f"Authorization: Basic {registry.owner[7:]}"], 401),
        "owner-then-junk": ([f"Authorization: {registry.owner}", "Authorization: Bearer junk"], 401),
        "junk-then-owner": (["Authorization: Bearer junk", f"Authorization: {registry.owner}"], 401),
    }
    targets = [("GET", registry.manifest_path), ("HEAD", registry.manifest_path), ("HEAD", registry.blob_path)]
    conn = connect()
    expected: list[tuple[str, int]] = []
    sent = b""
    for method, target in targets:
        sent += head(method, target, f"Authorization: {registry.owner}", _accept())
        expected.append((method, 200))
        for headers, status in refused.values():
            sent += head(method, target, *headers, _accept())
            expected.append((method, status))
        sent += head(method, target, f"Authorization: {registry.owner}", _accept())
        expected.append((method, 200))
    conn.send(sent)  # all at once: the cache is warm for the owner's requests in between
    seen = [conn.reply(method).status for method, _ in expected]
    assert seen == [status for _, status in expected]
    # The refusals are the full path's, challenge included.
    conn.send(head("GET", registry.manifest_path, _accept()))
    challenge = conn.reply()
    assert challenge.status == 401
    assert f'scope="repository:{NAME}:pull"' in challenge.headers["www-authenticate"]
    assert b"UNAUTHORIZED" in challenge.body
    # A token that may pull another repository only, though that repository's blobs are the same bytes.
    other = "a/quick-heads-other"
    push_blob(stack, "a", other, LAYER)
    elsewhere = token(stack, "a", f"repository:{other}:pull")
    conn.send(head("HEAD", registry.blob_path, f"Authorization: Bearer {elsewhere}"))
    assert conn.reply("HEAD").status == 401


@pytest.mark.parametrize("partial", [b"GET /v2/ HTTP/9.9\r\n", b"get /v2/ HTTP/1.1\r\nHost: x\r\n"],
                         ids=["version", "lowercase-method"])
def test_a_refused_request_line_is_answered_before_the_head_ends(connect: Callable[[], Connection],
                                                                 partial: bytes) -> None:
    conn = connect()
    conn.sock.settimeout(1.0)
    conn.send(partial)
    assert conn.reply().status == 400


def test_a_client_that_never_pauses_does_not_hold_the_worker(registry: Registry,
                                                             connect: Callable[[], Connection]) -> None:
    """One gateway worker; a greedy connection pipelines thousands of cache hits (its next request
    is always already there) while a thread reads its answers. Another client's request is
    answered while the greedy answers are still coming, not after the last of them."""
    auth = f"Authorization: {registry.owner}"
    total = 4000
    greedy, other = connect(), connect()
    greedy.sock.settimeout(30)
    received = 0
    done = threading.Event()

    def read_greedy() -> None:
        nonlocal received
        for _ in range(total):
            assert_blob_head(greedy.reply("HEAD"), registry)
            received += 1
        done.set()

    reader = threading.Thread(target=read_greedy, daemon=True)
    reader.start()
    greedy.send(head("HEAD", registry.blob_path, auth) * total)
    # The other client's request, once the worker is busy with the greedy one.
    while received < 50:
        assert not done.is_set() and reader.is_alive()
        time.sleep(0.001)
    other.send(head("HEAD", registry.blob_path, auth))
    assert_blob_head(other.reply("HEAD"), registry)
    answered_at = received
    reader.join(60)
    assert done.is_set() and received == total
    assert answered_at < total, "the other client waited for every one of the greedy client's answers"
