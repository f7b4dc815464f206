"""A registry that lies or attacks: credentials stay home, memory stays bounded, loops end, errors stay readable.

Each test turns one route of the in-memory registry hostile (``FakeRegistry.override``)
and checks what the client does, and what reached the other host it was pointed at.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Callable

import pytest
import requests
import urllib3
from wharf_client import Client, ClientOptions, Credential, Descriptor, RegistryOptions, StaticCredentials
from wharf_client.blobio import BytesSource
from wharf_client.digest import of
from wharf_client.errors import AuthenticationError, FormatError, NotFoundError, ProtocolError, TransportError
from wharf_client.manifest import Manifest, image_manifest
from wharf_client.upload import RangeMismatch, Uploader

from tests.unit.client.fakeregistry import HOST, OTHER, Answer, Behaviour, FakeRegistry, OtherHost

MakeClient = Callable[..., Client]
ALICE = Credential(username="alice", password="secret")


def blob(size: int) -> BytesSource:
    data = os.urandom(size)
    return BytesSource(data, Descriptor("application/octet-stream", of(data), size))


def with_other_host(client: Client, other: OtherHost) -> OtherHost:
    for scheme in ("http", "https"):
        client.session.mount(f"{scheme}://{OTHER}", other)
    return other


class Endless(io.RawIOBase):
    """A body that goes on for ``total`` bytes (as good as endless), counting what was read of it."""

    def __init__(self, total: int = 256 * 1024 * 1024, prefix: bytes = b"") -> None:
        self.total = total
        self.served = 0
        self._prefix = prefix

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self.total - self.served)
        data = (self._prefix + b"A" * size)[:size]
        self._prefix = self._prefix[len(data):]
        buffer[:size] = data
        self.served += size
        return size


class BreaksOff(io.RawIOBase):
    """A body whose connection drops after ``good`` bytes of ``data``."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data = io.BytesIO(data[:good])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        if not chunk:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        buffer[: len(chunk)] = chunk
        return len(chunk)


# -- 1. Link and Location headers stay on the registry's origin -------------------------------------


@pytest.mark.parametrize("link", [f"http://{OTHER}/v2/app/tags/list?last=a", f"https://{HOST}/v2/app/tags/list",
                                  f"http://{HOST}:8080/v2/app/tags/list", f"//{OTHER}/v2/app/tags/list"])
def test_a_link_to_another_origin_is_refused(make_client: MakeClient, link: str) -> None:
    fake = FakeRegistry(Behaviour(basic=True))
    client = make_client(ALICE)
    client.session.mount(f"http://{HOST}", fake)
    other = with_other_host(client, OtherHost(body=b'{"tags":["stolen"]}'))
    fake.override("GET", "/tags/list", lambda _: (200, {"Link": f'<{link}>; rel="next"'}, b'{"tags":["a"]}'))
    with pytest.raises(ProtocolError, match="Link header points at"):
        list(client.repository(f"{HOST}/app").tags())
    assert other.requests == []
    assert [p for m, p in fake.log if "tags" in p] == ["/v2/app/tags/list"]


def test_a_link_on_the_registry_is_followed(make_client: MakeClient) -> None:
    fake = FakeRegistry()
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    pages = {"": (b'{"tags":["a"]}', {"Link": '</v2/app/tags/list?last=a>; rel="next"'}),
             "last=a": (b'{"tags":["b"]}', {})}

    def page(request: requests.PreparedRequest) -> Answer:
        body, headers = pages[(request.url or "").partition("?")[2]]
        return 200, headers, body
    fake.override("GET", "/tags/list", page)
    assert list(client.repository(f"{HOST}/app").tags()) == ["a", "b"]


@pytest.mark.parametrize("path", ["mount", "monolithic", "chunked"])
def test_an_upload_location_on_another_host_is_refused(make_client: MakeClient, path: str) -> None:
    fake = FakeRegistry(Behaviour(basic=True, monolithic_post=False))
    client = make_client(ALICE, monolithic_limit=1000, chunk_size=1000)
    client.session.mount(f"http://{HOST}", fake)
    other = with_other_host(client, OtherHost(201))
    fake.override("POST", "/blobs/uploads/$", lambda _: (202, {"Location": f"http://{OTHER}/v2/app/blobs/uploads/u"},
                                                         b""))
    repo = client.repository(f"{HOST}/app")
    with pytest.raises(ProtocolError, match="Location header points at"):
        Uploader(repo, blob(500 if path != "chunked" else 5000)).run(mount_from=["src"] if path == "mount" else ())
    assert other.requests == []


def test_an_absolute_url_elsewhere_is_never_requested(make_client: MakeClient) -> None:
    client = make_client(ALICE)
    transport = client.transport(HOST)
    other = with_other_host(client, OtherHost())
    with pytest.raises(ProtocolError, match="refusing to send"):
        transport.request("GET", f"http://{OTHER}/v2/")
    assert transport.url(f"http://{HOST}:80/v2/x") == f"http://{HOST}:80/v2/x"  # the default port is the same origin
    assert other.requests == []


def test_a_202_without_location_is_a_protocol_error(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(monolithic_post=False))
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    fake.override("POST", "/blobs/uploads/$", lambda _: (202, {}, b""))
    with pytest.raises(ProtocolError, match="without the Location header"):
        Uploader(client.repository(f"{HOST}/app"), blob(100)).run(mount_from=["src"])


# -- 2. a redirect target's 401 is not a challenge --------------------------------------------------


def test_a_401_from_a_redirect_target_is_an_error_not_a_challenge(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(basic=True))
    client = make_client(ALICE)
    client.session.mount(f"http://{HOST}", fake)
    steal = f'Bearer realm="http://{OTHER}/steal",service="x"'
    other = with_other_host(client, OtherHost(401, {"WWW-Authenticate": steal}, b"{}"))
    source = blob(100)
    fake.blobs[source.descriptor.digest] = source.open().read()
    fake.override("GET", "/blobs/sha256:", lambda _: (307, {"Location": f"http://{OTHER}/storage/blob"}, b""))
    with pytest.raises(AuthenticationError, match="not sent to another host"):
        client.repository(f"{HOST}/app").fetch_blob(source.descriptor)
    assert [(m, url) for m, url, _ in other.requests] == [("GET", f"http://{OTHER}/storage/blob")]
    assert all(auth == "" for _, _, auth in other.requests)
    assert client.transport(HOST)._challenge is not None and client.transport(HOST)._challenge.scheme == "basic"


# -- 3. an HTTPS registry's credentials never go to a plain-HTTP realm ------------------------------


def https_client(fake: FakeRegistry, insecure: bool) -> Client:
    session = requests.Session()
    options = ClientOptions(default_registry_options=RegistryOptions(insecure=insecure), retries=0)
    client = Client(options, StaticCredentials({HOST: ALICE}), session)
    session.mount(f"https://{HOST}", fake)
    session.mount(f"http://{HOST}", fake)  # the realm the registry names: http://fake.test/token
    return client


def test_an_https_registry_naming_an_http_realm_gets_no_password() -> None:
    fake = FakeRegistry(Behaviour(bearer=True))
    fake.manifests[("app", "v1")] = (image_manifest(blob(2).descriptor, []).content,
                                     "application/vnd.oci.image.manifest.v1+json")
    with https_client(fake, insecure=False) as client, pytest.raises(AuthenticationError, match="plain-HTTP"):
        client.repository(f"{HOST}/app").get_manifest("v1")
    assert fake.token_requests == []
    with https_client(fake, insecure=True) as client:  # --insecure-registry: the user's choice
        assert client.repository(f"{HOST}/app").get_manifest("v1").media_type.endswith("manifest.v1+json")
    assert fake.token_requests and fake.token_requests[0]["auth"].startswith("Basic ")


# -- 5. bodies are read with a cap ------------------------------------------------------------------


def test_an_endless_listing_is_refused_after_the_cap(make_client: MakeClient, fake: FakeRegistry) -> None:
    body = Endless(prefix=b'{"tags":["')
    fake.override("GET", "/tags/list", lambda _: (200, {"Content-Type": "application/json"}, body))
    with pytest.raises(FormatError, match="larger than"):
        list(make_client().repository(f"{HOST}/app").tags())
    assert body.served < 8 * 1024 * 1024


def test_a_gzip_bomb_is_counted_decoded(make_client: MakeClient, fake: FakeRegistry) -> None:
    bomb = gzip.compress(b'{"tags":["' + b"A" * 64 * 1024 * 1024, compresslevel=9)
    assert len(bomb) < 1024 * 1024
    fake.override("GET", "/tags/list", lambda _: (200, {"Content-Encoding": "gzip"}, bomb))
    with pytest.raises(FormatError, match="larger than"):
        list(make_client().repository(f"{HOST}/app").tags())


def test_endless_error_and_ping_bodies_are_cut(make_client: MakeClient, fake: FakeRegistry) -> None:
    error_body, ping_body = Endless(), Endless()
    fake.override("GET", "/manifests/", lambda _: (404, {}, error_body))
    fake.override("GET", "^/v2/$", lambda _: (200, {}, ping_body))
    with pytest.raises(NotFoundError):
        make_client().repository(f"{HOST}/app").get_manifest("v1")
    assert error_body.served < 1024 * 1024 and ping_body.served < 1024 * 1024


def test_an_endless_token_answer_is_refused(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(bearer=True))
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    body = Endless(prefix=b'{"token":"')
    original = fake._token
    fake._token = lambda request, query: fake._respond(request, 200, {}, body)  # type: ignore[method-assign]
    with pytest.raises(FormatError, match="token answer is larger than"):
        list(client.repository(f"{HOST}/app").tags())
    fake._token = original  # type: ignore[method-assign]
    assert body.served < 8 * 1024 * 1024


def test_an_endless_redirect_body_is_not_read_whole(make_client: MakeClient, fake: FakeRegistry) -> None:
    client = make_client()
    source = blob(100)
    fake.blobs[source.descriptor.digest] = source.open().read()
    body = Endless()
    fake.override("GET", "/blobs/sha256:", lambda _: (307, {"Location": "/storage/x"}, body))
    fake.override("GET", "^/storage/x$", lambda _: (200, {}, source.open().read()))
    assert client.repository(f"{HOST}/app").fetch_blob(source.descriptor) == source.open().read()
    assert body.served < 1024 * 1024


# -- 6. an index that repeats itself is walked once -------------------------------------------------


class CountingSource:
    """An image source in memory that counts how often each manifest is asked for."""

    label = "memory"

    def __init__(self, root: Manifest, others: list[Manifest]) -> None:
        self._root = root
        self._manifests = {m.digest: m for m in [root, *others]}
        self.asked: dict[str, int] = {}

    def root(self) -> Manifest:
        return self._root

    def manifest(self, descriptor: Descriptor) -> Manifest:
        self.asked[descriptor.digest] = self.asked.get(descriptor.digest, 0) + 1
        return self._manifests[descriptor.digest]

    def blob(self, descriptor: Descriptor) -> BytesSource:
        raise AssertionError("not reached")

    def close(self) -> None:
        pass


def fan_out(width: int) -> CountingSource:
    from wharf_client.manifest import index
    image = image_manifest(blob(2).descriptor, [])
    platform = {"os": "linux", "architecture": "amd64"}
    entry = Descriptor.from_json({**image.descriptor().to_json(), "platform": platform})
    middle = index([entry] * width)
    top = index([Descriptor.from_json({**middle.descriptor().to_json(), "platform": platform})] * width)
    return CountingSource(top, [middle, image])


def test_a_repeated_index_entry_is_fetched_once() -> None:
    from wharf_client.copy import _plan
    source = fan_out(30)
    plan = _plan(source, source.root(), None)
    assert set(source.asked.values()) == {1}
    assert len(plan.manifests) == 3 and len(plan.blobs) == 1


def test_the_descriptors_of_one_image_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    from wharf_client import copy
    monkeypatch.setattr(copy, "MAX_DESCRIPTORS", 50)
    source = fan_out(30)
    with pytest.raises(FormatError, match="refusing to walk it"):
        copy._plan(source, source.root(), None)


# -- 7. an upload offset that does not add up -------------------------------------------------------


def test_a_range_that_never_advances_ends_in_an_error(make_client: MakeClient, fake: FakeRegistry) -> None:
    stuck = {"Location": "/v2/app/blobs/uploads/u1", "Range": "0-0"}
    fake.override("POST", "/blobs/uploads/$", lambda _: (202, stuck, b""))
    fake.override("PATCH", "/uploads/u1", lambda _: (202, stuck, b""))
    fake.override("GET", "/uploads/u1", lambda _: (204, stuck, b""))
    client = make_client(monolithic_limit=1000, chunk_size=1000, retries=3)
    with pytest.raises(RangeMismatch, match="holds 0 bytes after receiving bytes 0-999"):
        Uploader(client.repository(f"{HOST}/app"), blob(5000), sleep=lambda _: None).run()
    patches = [m for m, p in fake.log if m == "PATCH"]
    assert len(patches) == 4  # the first try and three resumes, each from the registry's offset 0
    assert "PUT" not in [m for m, _ in fake.log]


def test_a_registry_that_keeps_less_is_resumed_from_its_offset(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(truncate_patch_once=300))
    client = make_client(monolithic_limit=1000, chunk_size=1000)
    client.session.mount(f"http://{HOST}", fake)
    source = blob(5000)
    uploader = Uploader(client.repository(f"{HOST}/app"), source, sleep=lambda _: None)
    uploader.run()
    assert uploader.resumes == 1
    assert fake.blobs[source.descriptor.digest] == source.open().read()


# -- 8. what the registry says is printed inert -----------------------------------------------------


def test_escape_sequences_from_the_registry_are_escaped(make_client: MakeClient, fake: FakeRegistry) -> None:
    evil = {"errors": [{"code": "MANIFEST_UNKNOWN\x1b[2J", "message": "\x1b]0;TITLE\x07\x1b[31mLogin Succeeded"}]}
    fake.override("GET", "/manifests/", lambda _: (404, {}, json.dumps(evil).encode()))
    with pytest.raises(NotFoundError) as caught:
        make_client().repository(f"{HOST}/app").get_manifest("v1")
    message = str(caught.value)
    assert "\x1b" not in message and "\x07" not in message
    assert "\\x1b]0;TITLE\\x07\\x1b[31mLogin Succeeded" in message


# -- 10. a manifest body that breaks off ------------------------------------------------------------


def test_a_broken_manifest_body_is_retried_then_a_transport_error(make_client: MakeClient, fake: FakeRegistry) -> None:
    manifest = image_manifest(blob(2).descriptor, [])
    fake.manifests[("app", "v1")] = (manifest.content, manifest.media_type)
    answers = iter([BreaksOff(manifest.content, 10)])

    def flaky(request: requests.PreparedRequest) -> Answer:
        body = next(answers, None)
        if body is None:
            return 200, {"Content-Type": manifest.media_type}, manifest.content
        return 200, {"Content-Type": manifest.media_type, "Content-Length": str(len(manifest.content))}, body
    fake.override("GET", "/manifests/v1", flaky)
    client = make_client()
    assert client.repository(f"{HOST}/app").get_manifest("v1").digest == manifest.digest
    assert client.slept  # it waited before the second GET

    fake.override("GET", "/manifests/v2", lambda _: (200, {}, BreaksOff(manifest.content, 10)))
    with pytest.raises(TransportError, match=f"GET http://{HOST}/v2/app/manifests/v2: the body"):
        make_client(retries=1).repository(f"{HOST}/app").get_manifest("v2")


# -- 11. nesting deep enough to exhaust the recursion limit -----------------------------------------


def test_deeply_nested_json_is_a_format_error(make_client: MakeClient, fake: FakeRegistry) -> None:
    deep = b'{"schemaVersion":2,"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(FormatError, match="nested too deeply"):
        Manifest.parse(deep)
    fake.override("GET", "/manifests/", lambda _: (404, {}, b"[" * 10_000))  # an error body, too
    with pytest.raises(NotFoundError):
        make_client().repository(f"{HOST}/app").get_manifest("v1")


# -- 13. a malformed answer names the URL ------------------------------------------------------------


def test_a_malformed_answer_is_a_transport_error_naming_the_url(make_client: MakeClient, fake: FakeRegistry) -> None:
    def conflicting(request: requests.PreparedRequest) -> Answer:
        raise requests.exceptions.InvalidHeader("Content-Length contained multiple unmatching values (5, 6)")
    fake.override("GET", "/manifests/", conflicting)
    with pytest.raises(TransportError, match=f"GET http://{HOST}/v2/app/manifests/v1: InvalidHeader"):
        make_client().repository(f"{HOST}/app").get_manifest("v1")
