"""Redis that answers reads but refuses writes — out of memory under ``noeviction``, or a
read-only replica after a failover: writes get 503 with the registry's JSON error and a
Retry-After, pulls and listings keep working, tokens are still issued, and writes work again
once Redis takes them (services/common/redis_refusals.py; docs/operations.md)."""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests

from services.common import digests
from services.stack.processes import Child, start_redis
from tests.support.stack import RunningStack

ADMIN_PASSWORD = "refusal-admin-1"
LOGIN_FAILURES = 3
REPOSITORY = "refusal/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# A refused write announces nothing to the gateways' caches, so its 503 does not wait out the
# invalidation's confirmations (about 4.5 s with the default lease and ack timeout).
PROMPT = 2.0


class Registry:
    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.redis_child, self.redis_url = start_redis(directory / "redis", os.environ, time.monotonic() + 30,
                                                       appendfsync="everysec")
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        self.stack = RunningStack(directory / "wharf", {
            "WHARF_REDIS_URL": self.redis_url, "WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "WHARF_BCRYPT_ROUNDS": "4", "WHARF_LOGIN_FAILURES": str(LOGIN_FAILURES)})

    @property
    def url(self) -> str:
        return self.stack.url

    def token(self, auth: tuple[str, str] | None, *scopes: str, **params: str) -> requests.Response:
        return requests.get(f"{self.url}/token", params={"service": "wharf", "scope": list(scopes), **params},
                            auth=auth, timeout=30)

    def session(self, auth: tuple[str, str] | None, *scopes: str) -> requests.Session:
        answer = self.token(auth, *scopes)
        assert answer.status_code == 200, answer.text
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {answer.json()['token']}"
        return session

    def stop(self) -> None:
        self.stack.stop()
        self.redis.close()
        self.redis_child.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    setup = Registry(tmp_path_factory.mktemp("refusal"))
    try:
        setup.stack.start()
        setup.stack.admin(ADMIN_PASSWORD, "repo", "public", REPOSITORY)
        setup.stack.admin(ADMIN_PASSWORD, "user", "add", "target", "--password-stdin", stdin="target-secret-1\n")
        yield setup
    finally:
        setup.stop()


ADMIN = ("admin", ADMIN_PASSWORD)
PUSH = (f"repository:{REPOSITORY}:pull,push", "repository:refusal/other:pull,push", "registry:catalog:*")


@pytest.fixture()
def admin(registry: Registry) -> Iterator[requests.Session]:
    with registry.session(ADMIN, *PUSH) as session:  # a kept-alive connection would hold up the gateway's stop
        yield session


# -- the client side --------------------------------------------------------------------------

def upload(session: requests.Session, url: str, repository: str, data: bytes) -> requests.Response:
    """A chunked upload; the answer of its first step that fails, else the final PUT's."""
    started = session.post(f"{url}/v2/{repository}/blobs/uploads/", timeout=30)
    if started.status_code != 202:
        return started
    patched = session.patch(url + started.headers["Location"], data=data, timeout=30,
                            headers={"Content-Type": "application/octet-stream"})
    if patched.status_code != 202:
        return patched
    return session.put(url + patched.headers["Location"], params={"digest": digests.of(data)}, timeout=30)


def manifest_for(config: bytes, layers: list[bytes]) -> bytes:
    def descriptor(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": digests.of(data), "size": len(data)}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                       "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer) for layer in layers]},
                      ).encode()


def put_manifest(session: requests.Session, url: str, tag: str, body: bytes) -> requests.Response:
    return session.put(f"{url}/v2/{REPOSITORY}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST},
                       timeout=30)


class Image:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
        self.layers = [os.urandom(200_000), os.urandom(50_000)]
        self.manifest = manifest_for(self.config, self.layers)

    def push(self, session: requests.Session, url: str) -> None:
        for blob in [*self.layers, self.config]:
            answer = upload(session, url, REPOSITORY, blob)
            assert answer.status_code == 201, answer.text
        answer = put_manifest(session, url, self.tag, self.manifest)
        assert answer.status_code == 201, answer.text

    def assert_pulls(self, session: requests.Session, url: str) -> None:
        """Manifest by tag and by digest, every blob by HEAD and GET: byte for byte what was pushed."""
        for reference in (self.tag, digests.of(self.manifest)):
            got = session.get(f"{url}/v2/{REPOSITORY}/manifests/{reference}", headers={"Accept": OCI_MANIFEST},
                              timeout=30)
            assert got.status_code == 200 and got.content == self.manifest, got.text
            assert got.headers["Docker-Content-Digest"] == digests.of(self.manifest)
            head = session.head(f"{url}/v2/{REPOSITORY}/manifests/{reference}", headers={"Accept": OCI_MANIFEST},
                                timeout=30)
            assert head.status_code == 200 and head.headers["Content-Length"] == str(len(self.manifest))
        for blob in [self.config, *self.layers]:
            head = session.head(f"{url}/v2/{REPOSITORY}/blobs/{digests.of(blob)}", timeout=30)
            assert head.status_code == 200 and head.headers["Content-Length"] == str(len(blob))
            got = session.get(f"{url}/v2/{REPOSITORY}/blobs/{digests.of(blob)}", timeout=60)
            assert got.status_code == 200 and got.content == blob


def assert_refused(answer: requests.Response, took: float) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text)
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Retry-After"] == "30"
    error = answer.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE" and "refuses writes; reads still work" in error["message"], error
    assert "Traceback" not in answer.text
    assert took < PROMPT, f"a refused write took {took:.2f} s"


def assert_writes_refused(registry: Registry, session: requests.Session, image: Image) -> None:
    """A manifest PUT (its blobs are there), a blob upload and a cross-repository mount: each 503."""
    url = registry.url
    started = time.monotonic()
    answer = put_manifest(session, url, "refused", image.manifest)
    assert_refused(answer, time.monotonic() - started)
    started = time.monotonic()
    answer = upload(session, url, REPOSITORY, os.urandom(10_000))
    assert_refused(answer, time.monotonic() - started)
    started = time.monotonic()
    answer = session.post(f"{url}/v2/{REPOSITORY}/blobs/uploads/", params={"digest": digests.of(b"small")},
                          data=b"small", timeout=30)
    assert_refused(answer, time.monotonic() - started)
    started = time.monotonic()
    answer = session.post(f"{url}/v2/refusal/other/blobs/uploads/", timeout=30,
                          params={"mount": digests.of(image.config), "from": REPOSITORY})
    assert_refused(answer, time.monotonic() - started)


def assert_reads_work(registry: Registry, session: requests.Session, images: list[Image]) -> None:
    url = registry.url
    for image in images:
        image.assert_pulls(session, url)
    with registry.session(None, f"repository:{REPOSITORY}:pull") as anonymous:  # the repository is public
        images[0].assert_pulls(anonymous, url)
    tags = session.get(f"{url}/v2/{REPOSITORY}/tags/list", timeout=30)
    assert tags.status_code == 200 and {image.tag for image in images} <= set(tags.json()["tags"]), tags.text
    assert "refused" not in tags.json()["tags"]
    catalog = session.get(f"{url}/v2/_catalog", timeout=30)
    assert catalog.status_code == 200 and REPOSITORY in catalog.json()["repositories"]
    assert "refusal/other" not in catalog.json()["repositories"]  # the refused mount left nothing


def assert_tokens_issued(registry: Registry, refresh_token: str) -> None:
    """Anonymous tokens, password logins and refresh tokens work; a login asking for a refresh token
    gets its access token without one (storing it is a write)."""
    scope = f"repository:{REPOSITORY}:pull"
    assert registry.token(None, scope).status_code == 200
    login = registry.token(ADMIN, scope)
    assert login.status_code == 200 and login.json()["token"], login.text
    offline = registry.token(ADMIN, scope, offline_token="true")
    assert offline.status_code == 200 and offline.json()["token"] and "refresh_token" not in offline.json()
    refreshed = requests.post(f"{registry.url}/token", timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "service": "wharf", "scope": scope})
    assert refreshed.status_code == 200 and refreshed.json()["access_token"], refreshed.text


def assert_logged_without_secrets(registry: Registry) -> None:
    log = registry.stack.log_path.read_text(errors="replace")
    assert '"Redis refuses writes"' in log
    assert ADMIN_PASSWORD not in log and "Traceback" not in log


def new_refresh_token(registry: Registry) -> str:
    answer = registry.token(ADMIN, f"repository:{REPOSITORY}:pull", offline_token="true")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["refresh_token"])


# -- the cases --------------------------------------------------------------------------------

def test_out_of_memory_refuses_writes_and_serves_reads(registry: Registry, admin: requests.Session) -> None:
    pushed = Image("oom-v1")
    pushed.push(admin, registry.url)
    refresh_token = new_refresh_token(registry)
    r = registry.redis
    filler = [f"test:filler:{i}" for i in range(128)]
    limit = 0
    try:
        for key in filler:  # 8 MiB, then a limit 4 MiB below what Redis holds: full, with room to spare
            r.set(key, os.urandom(64 * 1024))
        limit = int(r.info("memory")["used_memory"]) - 4 * 1024 * 1024
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", str(limit))
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            r.set("test:probe", "x")

        assert_writes_refused(registry, admin, pushed)
        assert_reads_work(registry, admin, [pushed])
        assert_tokens_issued(registry, refresh_token)
        assert_logged_without_secrets(registry)

        r.delete(*filler)  # the operator frees memory; the limit stays
        assert int(r.info("memory")["used_memory"]) < limit
        later = Image("oom-v2")
        later.push(admin, registry.url)
        assert_reads_work(registry, admin, [pushed, later])
        assert "refresh_token" in registry.token(ADMIN, "repository:x/y:pull", offline_token="true").json()
    finally:
        r.delete(*filler)
        r.config_set("maxmemory", "0")


def test_a_read_only_replica_refuses_writes_and_serves_reads(registry: Registry, admin: requests.Session,
                                                              tmp_path: pathlib.Path) -> None:
    pushed = Image("replica-v1")
    pushed.push(admin, registry.url)
    refresh_token = new_refresh_token(registry)
    primary = registry.redis
    other: Child | None = None
    try:
        # A failover the services were not told about: a second server copies this one and is
        # promoted, and this one (which the services still use) becomes its read-only replica.
        other, other_url = start_redis(tmp_path / "redis-b", os.environ, time.monotonic() + 30,
                                       appendfsync="everysec")
        promoted = redis.Redis.from_url(other_url, socket_timeout=10)
        primary_port = int(registry.redis_url.rsplit(":", 1)[1].split("/")[0])
        promoted.replicaof("127.0.0.1", primary_port)
        primary.set("test:marker", "copied")
        _wait(lambda: promoted.get("test:marker") == b"copied", "the second server never copied the first")
        promoted.replicaof("NO", "ONE")
        primary.replicaof("127.0.0.1", int(other_url.rsplit(":", 1)[1].split("/")[0]))
        _wait(lambda: primary.info("replication")["master_link_status"] == "up", "the replica never synced")
        with pytest.raises(redis.exceptions.ReadOnlyError):
            primary.set("test:probe", "x")

        assert_writes_refused(registry, admin, pushed)
        assert_reads_work(registry, admin, [pushed])
        assert_tokens_issued(registry, refresh_token)
        # Failed logins are still counted (in the auth service's memory): the account locks.
        for _ in range(LOGIN_FAILURES):
            assert registry.token(("target", "wrong-password"), "repository:x/y:pull").status_code == 401
        locked = registry.token(("target", "target-secret-1"), "repository:x/y:pull")
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0, locked.text
        assert_logged_without_secrets(registry)

        primary.replicaof("NO", "ONE")  # the operator points the services at a primary again
        later = Image("replica-v2")
        later.push(admin, registry.url)
        assert_reads_work(registry, admin, [pushed, later])
    finally:
        primary.replicaof("NO", "ONE")
        if other is not None:
            other.stop()


def _wait(condition: Callable[[], bool], failure: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)
