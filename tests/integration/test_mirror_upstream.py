"""The upstream client of the pull-through cache against real registries: CNCF Distribution
(anonymous), Wharf in token mode (the Bearer flow, behind a proxy that counts token requests) and
scripted loopback servers for what real registries do not do on demand (redirects, 429/503,
oversized or mismatching manifests, timeouts, TLS)."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import http.client
import ipaddress
import json
import os
import pathlib
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common import mediatypes
from services.mirror import upstream as upstream_module
from services.mirror.upstream import (
    MAX_MANIFEST_BYTES,
    UpstreamClient,
    UpstreamDenied,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamUnavailable,
)
from services.stack.processes import free_port
from tests.support.distribution import running_distribution
from tests.support.stack import RunningStack
from tests.support.tools import require_tool
from tests.support.trickle import TrickleServer

Answer = tuple[int, dict[str, str], bytes]
Handle = Callable[[str, str, dict[str, str]], Answer]
ADMIN_PASSWORD = "admin-secret-1"
ALICE_PASSWORD = "alice-secret-1"
UNKNOWN_LENGTH = "unknown"  # a Content-Length value that makes the scripted server omit it and close


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- pushing (Distribution answers absolute Locations, Wharf relative ones) ---------------------------

def push_blob(base: str, repository: str, data: bytes, headers: dict[str, str]) -> str:
    started = requests.post(f"{base}/v2/{repository}/blobs/uploads/", headers=headers, timeout=10)
    assert started.status_code == 202, started.text
    location = urllib.parse.urljoin(base + "/", started.headers["Location"])
    done = requests.put(location, params={"digest": sha256(data)}, data=data, timeout=30,
                        headers={**headers, "Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    return sha256(data)


def push_manifest(base: str, repository: str, tag: str, manifest: dict[str, object],
                  headers: dict[str, str]) -> tuple[str, int]:
    body = json.dumps(manifest).encode()
    media_type = str(manifest["mediaType"])
    response = requests.put(f"{base}/v2/{repository}/manifests/{tag}", data=body, timeout=10,
                            headers={**headers, "Content-Type": media_type})
    assert response.status_code == 201, response.text
    return sha256(body), len(body)


def push_image(base: str, repository: str, tag: str, layers: list[bytes],
               headers: dict[str, str] | None = None) -> tuple[str, int]:
    headers = headers or {}
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    manifest = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": push_blob(base, repository, config, headers),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": len(layer),
                            "digest": push_blob(base, repository, layer, headers)} for layer in layers]}
    return push_manifest(base, repository, tag, manifest, headers)


# -- a scripted loopback server ---------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    scripted: Scripted

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up on a large answer is what some tests want


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        scripted = self.server.scripted
        headers = {k.lower(): v for k, v in self.headers.items()}
        scripted.requests.append((self.command, self.path, headers))
        status, extra, body = scripted.handle(self.command, self.path, headers)
        self.send_response(status)
        for name, value in extra.items():
            if value != UNKNOWN_LENGTH:
                self.send_header(name, value)
        if extra.get("Content-Length") == UNKNOWN_LENGTH:
            self.send_header("Connection", "close")
            self.close_connection = True
        elif "Content-Length" not in extra:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET


class Scripted:
    """An HTTP(S) server on a free loopback port: ``handle(method, path, headers)`` answers each
    request, ``requests`` records them (header names in lower case)."""

    def __init__(self, handle: Handle, tls: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.scripted = self
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def paths(self, prefix: str = "") -> list[str]:
        return [path for _, path, _ in self.requests if path.startswith(prefix)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def scripted() -> Iterator[Callable[..., Scripted]]:
    started: list[Scripted] = []

    def start(handle: Handle, tls: ssl.SSLContext | None = None) -> Scripted:
        started.append(Scripted(handle, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


def bearer_registry(server: Callable[[], Scripted], blobs: Handle, *, expires_in: object = 300,
                    field: str = "token") -> tuple[Handle, list[str]]:
    """A registry that wants ``Bearer tok-<n>`` (the newest token only) and issues tokens at /token."""
    issued: list[str] = []

    def handle(method: str, path: str, headers: dict[str, str]) -> Answer:
        if path.startswith("/token"):
            issued.append(f"tok-{len(issued) + 1}")
            return 200, {"Content-Type": "application/json"}, json.dumps({field: issued[-1],
                                                                          "expires_in": expires_in}).encode()
        if not issued or headers.get("authorization") != f"Bearer {issued[-1]}":
            challenge = f'Bearer realm="{server().url}/token",service="fake",scope="repository:a/b:pull"'
            return 401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, \
                b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        return blobs(method, path, headers)

    return handle, issued


# -- CNCF Distribution, anonymous --------------------------------------------------------------------

class Pushed:
    def __init__(self, base: str, layers: list[bytes], digest: str, size: int) -> None:
        self.base, self.layers, self.digest, self.size = base, layers, digest, size


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    binary = require_tool("docker-registry", "Debian package docker-registry")
    with running_distribution(tmp_path_factory.mktemp("distribution"), binary) as host:
        base = f"http://{host}"
        layers = [os.urandom(2 * 1024 * 1024 + 12345), b"a small layer"]
        digest, size = push_image(base, "library/demo", "v1", layers)
        yield Pushed(base, layers, digest, size)


def test_manifest_by_tag_digest_and_head(distribution: Pushed) -> None:
    client = UpstreamClient(distribution.base, insecure=True)
    by_tag = client.manifest("library/demo", "v1")
    assert (by_tag.digest, by_tag.size, by_tag.media_type) == (distribution.digest, distribution.size,
                                                                mediatypes.OCI_MANIFEST)
    assert by_tag.body is not None and sha256(by_tag.body) == distribution.digest
    assert client.manifest("library/demo", distribution.digest) == by_tag
    head = client.manifest("library/demo", "v1", head=True)
    assert (head.digest, head.size, head.media_type, head.body) == (distribution.digest, distribution.size,
                                                                    mediatypes.OCI_MANIFEST, None)
    client.close()


def test_blob_streams_the_exact_bytes_in_bounded_chunks(distribution: Pushed) -> None:
    client = UpstreamClient(distribution.base, insecure=True)
    for layer in distribution.layers * 2:  # twice: the pooled connection is reused
        with client.blob("library/demo", sha256(layer)) as stream:
            chunks = list(stream)
        assert stream.size == len(layer) and stream.digest == sha256(layer)
        assert b"".join(chunks) == layer and max(len(c) for c in chunks) <= 1024 * 1024
    # A stream abandoned half-way gives its connection back closed; the next read still works.
    with client.blob("library/demo", sha256(distribution.layers[0])) as stream:
        next(iter(stream))
    with client.blob("library/demo", sha256(distribution.layers[1])) as stream:
        assert b"".join(stream) == distribution.layers[1]


def test_unknown_manifests_blobs_and_repositories_are_not_found(distribution: Pushed) -> None:
    client = UpstreamClient(distribution.base, insecure=True)
    host = distribution.base.split("//")[1]
    with pytest.raises(UpstreamNotFound, match="MANIFEST_UNKNOWN") as caught:
        client.manifest("library/demo", "nope")
    assert caught.value.host == host and str(caught.value).startswith(f"upstream {host} ")
    with pytest.raises(UpstreamNotFound):
        client.manifest("library/demo", "nope", head=True)
    with pytest.raises(UpstreamNotFound):
        client.manifest("nobody/here", "v1")
    with pytest.raises(UpstreamNotFound, match="BLOB_UNKNOWN"):
        client.blob("library/demo", sha256(b"never pushed"))


def test_referrers_fall_back_to_the_tag_schema(distribution: Pushed) -> None:
    """Distribution has no referrers API (404): the ``sha256-<hex>`` tag answers instead."""
    client = UpstreamClient(distribution.base, insecure=True)
    assert client.referrers("library/demo", distribution.digest) is None
    signature, size = push_image(distribution.base, "library/demo", "signature", [b"a signature"])
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": signature, "size": size, "artifactType": "application/x-sig"}]}
    push_manifest(distribution.base, "library/demo", "sha256-" + distribution.digest.split(":")[1], index, {})
    found = client.referrers("library/demo", distribution.digest)
    assert found is not None and json.loads(found) == index
    filtered = client.referrers("library/demo", distribution.digest, artifact_type="application/x-other")
    assert filtered is not None and json.loads(filtered)["manifests"] == []
    kept = client.referrers("library/demo", distribution.digest, artifact_type="application/x-sig")
    assert kept is not None and json.loads(kept)["manifests"] == index["manifests"]


def test_connection_refused_is_unavailable() -> None:
    host = f"127.0.0.1:{free_port()}"
    client = UpstreamClient(f"http://{host}", insecure=True, timeout=5)
    with pytest.raises(UpstreamUnavailable, match="cannot connect") as caught:
        client.manifest("library/demo", "v1")
    assert caught.value.host == host and str(caught.value).startswith(f"upstream {host} unreachable")
    with pytest.raises(UpstreamUnavailable):
        client.blob("library/demo", sha256(b"x"))


# -- Wharf in token mode, behind a proxy that counts token requests ------------------------------------

class Wharf:
    def __init__(self, stack: RunningStack, proxy: Scripted, digest: str, layers: list[bytes]) -> None:
        self.stack, self.proxy, self.digest, self.layers = stack, proxy, digest, layers

    def token_requests(self) -> int:
        return len(self.proxy.paths("/token"))


def forwarding(target: str) -> Handle:
    """Passes requests on to ``target`` with their Host header, so Wharf's realm names the proxy."""
    def handle(method: str, path: str, headers: dict[str, str]) -> Answer:
        connection = http.client.HTTPConnection(target, timeout=30)
        try:
            connection.request(method, path, headers={k: v for k, v in headers.items() if k != "connection"})
            response = connection.getresponse()
            body = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in ("connection", "transfer-encoding",
                                                                                 "keep-alive")}
            return response.status, kept, body
        finally:
            connection.close()
    return handle


@pytest.fixture(scope="module")
def wharf(start_stack: Callable[..., RunningStack]) -> Iterator[Wharf]:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_BCRYPT_ROUNDS": "4"})
    stack.admin(ADMIN_PASSWORD, "user", "add", "alice", "--password-stdin", stdin=ALICE_PASSWORD + "\n")
    issued = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": "repository:alice/app:pull,push"},
                          auth=("alice", ALICE_PASSWORD), timeout=10)
    assert issued.status_code == 200, issued.text
    layers = [os.urandom(300_000), b"config-ish"]
    digest, _ = push_image(stack.url, "alice/app", "v1", layers, {"Authorization": f"Bearer {issued.json()['token']}"})
    proxy = Scripted(forwarding(stack.host))
    yield Wharf(stack, proxy, digest, layers)
    proxy.close()


def test_bearer_flow_with_credentials_fetches_one_token_per_scope(wharf: Wharf) -> None:
    client = UpstreamClient(wharf.proxy.url, "alice", ALICE_PASSWORD, insecure=True)
    before = wharf.token_requests()
    answer = client.manifest("alice/app", "v1")
    assert answer.digest == wharf.digest
    assert client.manifest("alice/app", wharf.digest, head=True).digest == wharf.digest
    for layer in wharf.layers:
        with client.blob("alice/app", sha256(layer)) as stream:
            assert b"".join(stream) == layer
    referrers = client.referrers("alice/app", wharf.digest)  # Wharf has the OCI 1.1 API
    assert referrers is not None and json.loads(referrers)["manifests"] == []
    assert wharf.token_requests() - before == 1
    token_request = next(h for _, p, h in reversed(wharf.proxy.requests) if p.startswith("/token"))
    assert token_request["authorization"].startswith("Basic ")
    assert "scope=repository%3Aalice%2Fapp%3Apull" in wharf.proxy.paths("/token")[-1]


def test_concurrent_callers_share_one_token_fetch(wharf: Wharf) -> None:
    client = UpstreamClient(wharf.proxy.url, "alice", ALICE_PASSWORD, insecure=True)
    before = wharf.token_requests()
    barrier = threading.Barrier(8)
    results: list[str] = []

    def pull() -> None:
        barrier.wait()
        results.append(client.manifest("alice/app", "v1").digest)

    threads = [threading.Thread(target=pull) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [wharf.digest] * 8
    assert wharf.token_requests() - before == 1


def test_wrong_password_and_anonymous_are_denied(wharf: Wharf) -> None:
    wrong = UpstreamClient(wharf.proxy.url, "alice", "not-her-password", insecure=True)
    with pytest.raises(UpstreamDenied) as caught:
        wrong.manifest("alice/app", "v1")
    assert "not-her-password" not in str(caught.value) and caught.value.host == wharf.proxy.host
    with pytest.raises(UpstreamDenied):
        UpstreamClient(wharf.proxy.url, insecure=True).blob("alice/app", sha256(wharf.layers[0]))


# -- scripted upstreams ------------------------------------------------------------------------------

def test_blob_redirects_drop_authorization_for_other_hosts(scripted: Callable[..., Scripted]) -> None:
    data = os.urandom(100_000)
    cdn = scripted(lambda method, path, headers: (200, {}, data))

    def blobs(method: str, path: str, headers: dict[str, str]) -> Answer:
        if path.startswith("/v2/a/b/blobs/"):
            return 307, {"Location": "/storage/1"}, b""  # same origin: keeps Authorization
        return 302, {"Location": f"{cdn.url}/object?signature=s"}, b"moved"

    handle, issued = bearer_registry(lambda: upstream, blobs)
    upstream = scripted(handle)
    client = UpstreamClient(upstream.url, "user", "pass", insecure=True)
    with client.blob("a/b", sha256(data)) as stream:
        assert b"".join(stream) == data and stream.size == len(data)
    assert upstream.paths() == [f"/v2/a/b/blobs/{sha256(data)}", "/token?service=fake&scope=repository%3Aa%2Fb%3Apull",
                                f"/v2/a/b/blobs/{sha256(data)}", "/storage/1"]
    assert upstream.requests[-1][2]["authorization"] == f"Bearer {issued[-1]}"
    assert cdn.paths() == ["/object?signature=s"] and "authorization" not in cdn.requests[0][2]


def test_redirect_loops_end(scripted: Callable[..., Scripted]) -> None:
    loop = scripted(lambda method, path, headers: (302, {"Location": path}, b""))
    with pytest.raises(UpstreamInvalid, match="more than 5"):
        UpstreamClient(loop.url, insecure=True).blob("a/b", sha256(b"x"))
    assert len(loop.requests) == 6  # the first GET and five redirects


def test_a_refused_token_is_replaced_and_tokens_are_cached(scripted: Callable[..., Scripted]) -> None:
    handle, issued = bearer_registry(lambda: server, lambda m, p, h: (200, {"Content-Length": "2"}, b"ok"),
                                     field="access_token")
    server = scripted(handle)
    client = UpstreamClient(server.url, insecure=True)
    for _ in range(3):
        with client.blob("a/b", sha256(b"ok")) as stream:
            assert b"".join(stream) == b"ok"
    assert issued == ["tok-1"]
    issued.append("tok-revoked")  # the upstream now accepts only a token the client never saw
    with client.blob("a/b", sha256(b"ok")) as stream:
        assert b"".join(stream) == b"ok"
    assert issued == ["tok-1", "tok-revoked", "tok-3"]


def test_tokens_are_fetched_again_shortly_before_they_expire(scripted: Callable[..., Scripted]) -> None:
    handle, issued = bearer_registry(lambda: server, lambda m, p, h: (200, {}, b"ok"), expires_in=6)
    server = scripted(handle)
    client = UpstreamClient(server.url, insecure=True)
    b"".join(client.blob("a/b", sha256(b"ok")))
    b"".join(client.blob("a/b", sha256(b"ok")))
    assert len(issued) == 1
    time.sleep(1.2)  # usable until 5 s before expiry: 1 s here
    b"".join(client.blob("a/b", sha256(b"ok")))
    assert len(issued) == 2


def test_basic_challenges_use_the_configured_credentials(scripted: Callable[..., Scripted]) -> None:
    def handle(method: str, path: str, headers: dict[str, str]) -> Answer:
        if headers.get("authorization") != "Basic dXNlcjpwYXNz":  # user:pass
            return 401, {"WWW-Authenticate": 'Basic realm="upstream"'}, b""
        return 200, {}, b"ok"

    server = scripted(handle)
    assert b"".join(UpstreamClient(server.url, "user", "pass", insecure=True).blob("a/b", sha256(b"ok"))) == b"ok"
    for username, password in (("user", "wrong"), ("", "")):
        client = UpstreamClient(server.url, username, password, insecure=True)
        with pytest.raises(UpstreamDenied) as caught:
            client.blob("a/b", sha256(b"ok"))
        assert "wrong" not in str(caught.value) and "dXNlcj" not in str(caught.value)


def test_overload_and_outage_answers_are_unavailable(scripted: Callable[..., Scripted]) -> None:
    later = email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120),
                                        usegmt=True)
    answers = {"/v2/a/busy/": (503, {"Retry-After": "7"}, b"down"), "/v2/a/slow/": (429, {"Retry-After": later}, b""),
               "/v2/a/gone/": (502, {}, b"bad gateway"), "/v2/a/no/": (403, {}, b'{"errors":[{"code":"DENIED"}]}'),
               "/v2/a/odd/": (400, {}, b"")}
    server = scripted(lambda method, path, headers: next(v for k, v in answers.items() if path.startswith(k)))
    client = UpstreamClient(server.url, insecure=True)
    with pytest.raises(UpstreamUnavailable, match="503") as busy:
        client.manifest("a/busy", "v1")
    assert busy.value.retry_after == 7.0
    with pytest.raises(UpstreamUnavailable, match="429") as slow:
        client.blob("a/slow", sha256(b"x"))
    assert slow.value.retry_after is not None and 100 < slow.value.retry_after <= 120
    with pytest.raises(UpstreamUnavailable) as gone:
        client.referrers("a/gone", sha256(b"x"))
    assert gone.value.retry_after is None
    with pytest.raises(UpstreamDenied, match="DENIED"):
        client.manifest("a/no", "v1")
    with pytest.raises(UpstreamInvalid, match="HTTP 400"):
        client.manifest("a/odd", "v1")


def test_oversized_and_mismatching_manifests_are_invalid(scripted: Callable[..., Scripted]) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST}).encode()
    huge = b" " * (MAX_MANIFEST_BYTES + 1)
    answers: dict[str, Answer] = {
        "/v2/a/huge/": (200, {"Content-Type": mediatypes.OCI_MANIFEST}, huge),
        "/v2/a/stream/": (200, {"Content-Type": mediatypes.OCI_MANIFEST, "Content-Length": UNKNOWN_LENGTH}, huge),
        "/v2/a/lying/": (200, {"Docker-Content-Digest": sha256(b"other")}, body),
        "/v2/a/plain/": (200, {}, body),  # no Content-Type, no digest header: taken from the body
    }
    server = scripted(lambda method, path, headers: next(v for k, v in answers.items() if path.startswith(k)))
    client = UpstreamClient(server.url, insecure=True)
    with pytest.raises(UpstreamInvalid, match="limit"):
        client.manifest("a/huge", "v1")
    with pytest.raises(UpstreamInvalid, match="over 4194304 bytes"):
        client.manifest("a/stream", "v1")
    with pytest.raises(UpstreamInvalid, match="Docker-Content-Digest"):
        client.manifest("a/lying", "v1")
    with pytest.raises(UpstreamInvalid, match="digest"):
        client.manifest("a/lying", sha256(body), head=True)  # a HEAD: the header is all there is to compare
    with pytest.raises(UpstreamInvalid, match="digest"):
        client.manifest("a/plain", sha256(b"something else"))
    plain = client.manifest("a/plain", "v1")
    assert (plain.digest, plain.media_type, plain.body) == (sha256(body), mediatypes.OCI_MANIFEST, body)
    assert client.manifest("a/plain", sha256(body)).body == body


def test_slow_upstream_times_out(scripted: Callable[..., Scripted]) -> None:
    def slow(method: str, path: str, headers: dict[str, str]) -> Answer:
        time.sleep(2)
        return 200, {}, b""

    server = scripted(slow)
    with pytest.raises(UpstreamUnavailable, match="timed out"):
        UpstreamClient(server.url, insecure=True, timeout=0.5).manifest("a/b", "v1")


def test_an_upstream_trickling_a_blob_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read of a byte every 0.2 s is within the client's timeout; the rate floor is not (it
    held a fill, and a blob-store thread, for as long as the upstream liked), and the stream cut
    short is closed, not drained at the upstream's pace."""
    monkeypatch.setattr(upstream_module, "CHUNK_SECONDS", 1.0)
    server = TrickleServer(size=4096, interval=0.2)
    try:
        started = time.monotonic()
        client = UpstreamClient(server.url, insecure=True, timeout=5)
        with pytest.raises(UpstreamUnavailable, match="too slow"), client.blob("a/b", "sha256:" + "a" * 64) as stream:
            for _ in stream:
                pass
        assert time.monotonic() - started < 5
    finally:
        server.close()


def _tls(directory: pathlib.Path) -> tuple[ssl.SSLContext, pathlib.Path]:
    """A server context with a self-signed certificate for 127.0.0.1, and that certificate's file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "ca.crt", directory / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def test_tls_is_verified_and_credentials_stay_on_https(scripted: Callable[..., Scripted], tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    context, cert_file = _tls(tmp_path)
    plain = scripted(lambda method, path, headers: (200, {}, b"{}"))
    realm: list[str] = []

    def blobs(method: str, path: str, headers: dict[str, str]) -> Answer:
        return 302, {"Location": f"{plain.url}/object"}, b""

    handle, issued = bearer_registry(lambda: upstream, blobs)

    def with_realm(method: str, path: str, headers: dict[str, str]) -> Answer:
        if realm and path.startswith("/v2/"):
            return 401, {"WWW-Authenticate": f'Bearer realm="{realm[0]}",service="fake"'}, b""
        return handle(method, path, headers)

    upstream = scripted(with_realm, tls=context)
    with pytest.raises(UpstreamUnavailable, match="TLS"):
        UpstreamClient(upstream.url).manifest("a/b", "v1")  # not signed by a CA the system trusts
    assert upstream.requests == []
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    client = UpstreamClient(upstream.url, "user", "secret")
    with pytest.raises(UpstreamInvalid, match="plain http"):
        client.blob("a/b", sha256(b"{}"))  # authenticated over https, then redirected to http
    assert issued == ["tok-1"] and plain.requests == []
    realm.append(f"{plain.url}/token")
    with pytest.raises(UpstreamInvalid, match="not https"):
        UpstreamClient(upstream.url, "user", "secret").manifest("a/b", "v1")
    assert plain.requests == []  # the credentials never went to the http realm
