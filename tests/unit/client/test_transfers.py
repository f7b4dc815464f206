"""Uploads, downloads, retries and auth against the in-memory registry: every protocol branch, no sockets."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from wharf_client import Client, Credential, Descriptor, DigestMismatch, Outcome, push_blob
from wharf_client.blobio import BytesSource
from wharf_client.digest import of
from wharf_client.errors import AuthenticationError, NotFoundError, RegistryError
from wharf_client.manifest import image_manifest
from wharf_client.transport import retry_after_seconds
from wharf_client.upload import Uploader, received_bytes

from tests.unit.client.fakeregistry import HOST, Behaviour, FakeRegistry

MakeClient = Callable[..., Client]


def blob(size: int) -> BytesSource:
    data = os.urandom(size)
    return BytesSource(data, Descriptor("application/octet-stream", of(data), size))


def test_small_blob_is_one_post_then_skipped(fake: FakeRegistry, make_client: MakeClient) -> None:
    source = blob(1000)
    repo = make_client().repository(f"{HOST}/app")
    assert push_blob(repo, source) is Outcome.UPLOADED
    assert [m for m, p in fake.log if "uploads" in p] == ["POST"]
    assert push_blob(repo, source) is Outcome.EXISTS
    assert fake.blobs[source.descriptor.digest] == source.open().read()


def test_monolithic_post_answered_202_falls_back_to_put_and_is_remembered(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(monolithic_post=False))
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    repo = client.repository(f"{HOST}/app")
    first, second = blob(500), blob(600)
    push_blob(repo, first)
    push_blob(repo, second)
    uploads = [m for m, p in fake.log if "uploads" in p]
    # First blob: POST (body ignored) + PUT; second: the registry's habit is known, so POST + PUT without a body.
    assert uploads == ["POST", "PUT", "POST", "PUT"]
    assert repo.transport.monolithic_post is False
    assert {first.descriptor.digest, second.descriptor.digest} <= set(fake.blobs)


def test_large_blob_goes_in_chunks(fake: FakeRegistry, make_client: MakeClient) -> None:
    source = blob(250_000)
    repo = make_client(monolithic_limit=100_000, chunk_size=64_000).repository(f"{HOST}/app")
    assert push_blob(repo, source) is Outcome.UPLOADED
    assert [m for m, p in fake.log if "uploads" in p] == ["POST", "PATCH", "PATCH", "PATCH", "PATCH", "PUT"]
    assert fake.blobs[source.descriptor.digest] == source.open().read()


def test_dropped_chunk_resumes_from_the_registry_range(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(drop_patch_after=30_000))
    client = make_client(monolithic_limit=100_000, chunk_size=64_000)
    client.session.mount(f"http://{HOST}", fake)
    source = blob(250_000)
    uploader = Uploader(client.repository(f"{HOST}/app"), source, sleep=lambda _: None)
    assert uploader.run() is Outcome.UPLOADED
    assert uploader.resumes == 1
    assert fake.blobs[source.descriptor.digest] == source.open().read()
    # Only the lost part of one chunk was sent twice, never the whole blob.
    assert fake.body_bytes == 250_000
    assert ("GET", next(p for m, p in fake.log if m == "GET" and "uploads" in p)) in fake.log


def test_range_header_reading() -> None:
    assert received_bytes("0-0") == 0
    assert received_bytes("0-99") == 100
    assert received_bytes("bytes=0-9") == 10
    assert received_bytes(None) is None and received_bytes("junk") is None


def test_429_is_retried_honouring_retry_after(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(throttle_first=2, retry_after="3"))
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    assert list(client.repository(f"{HOST}/app").tags()) == []
    assert client.slept == [3.0, 3.0]  # type: ignore[attr-defined]
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_errors_name_the_request_and_the_registry_reason(make_client: MakeClient) -> None:
    repo = make_client().repository(f"{HOST}/app")
    with pytest.raises(NotFoundError) as caught:
        repo.get_manifest("missing")
    assert caught.value.code == "MANIFEST_UNKNOWN"
    assert str(caught.value) == f"GET http://{HOST}/v2/app/manifests/missing: HTTP 404: MANIFEST_UNKNOWN: " \
                                "manifest unknown"


def test_download_is_verified(fake: FakeRegistry, make_client: MakeClient) -> None:
    source = blob(5000)
    repo = make_client().repository(f"{HOST}/app")
    push_blob(repo, source)
    assert repo.fetch_blob(source.descriptor) == source.open().read()
    fake.blobs[source.descriptor.digest] = b"x" * 5000  # the registry now serves other bytes
    with pytest.raises(DigestMismatch):
        repo.fetch_blob(source.descriptor)


def test_bearer_flow_gets_a_token_with_basic_credentials_and_caches_it(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(bearer=True))
    client = make_client(Credential("alice", "secret"))
    client.session.mount(f"http://{HOST}", fake)
    repo = client.repository(f"{HOST}/team/app")
    config = BytesSource(b"{}", Descriptor("application/vnd.oci.image.config.v1+json", of(b"{}"), 2))
    push_blob(repo, config)
    manifest = image_manifest(config.descriptor, [])
    repo.put_manifest(manifest, "v1")
    assert repo.get_manifest("v1").digest == manifest.digest
    assert len(fake.token_requests) == 1  # the push token (pull,push) also serves the pull
    sent = fake.token_requests[0]
    assert sent["method"] == "GET" and sent["query"]["scope"] == ["repository:team/app:pull,push"]
    assert sent["auth"].startswith("Basic ")


def test_refresh_token_uses_the_oauth2_post_form(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(bearer=True))
    client = make_client(Credential("alice", identity_token="refresh-1"))
    client.session.mount(f"http://{HOST}", fake)
    list(client.repository(f"{HOST}/app").tags())
    sent = fake.token_requests[0]
    assert sent["method"] == "POST"
    assert sent["form"]["grant_type"] == ["refresh_token"] and sent["form"]["refresh_token"] == ["refresh-1"]
    assert sent["form"]["scope"] == ["repository:app:pull"]


def test_password_grant_refusal_is_an_authentication_error(make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(bearer=True))
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    bearer = client.transport(HOST).ping()
    assert bearer is not None and bearer.realm == f"http://{HOST}/token"
    with pytest.raises(AuthenticationError, match="UNAUTHORIZED: invalid username or password"):
        client.tokens.password_grant(bearer, Credential("alice", "wrong"))
    issued = client.tokens.password_grant(bearer, Credential("alice", "secret"))
    assert issued is not None and getattr(issued, "refresh_token", "") == "refresh-1"


def test_registry_error_without_a_json_body(make_client: MakeClient) -> None:
    error = RegistryError("GET", "http://x/v2/", 502, [], "<html><body>Bad   gateway</body></html>")
    assert str(error) == "GET http://x/v2/: HTTP 502: <html><body>Bad gateway</body></html>"
