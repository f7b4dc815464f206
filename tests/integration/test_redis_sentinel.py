"""Redis behind Sentinel: the stack finds its primary through three sentinels, and keeps
serving after the primary is killed and a replica promoted (calls during the failover may
fail with 503; none return wrong data)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import time
from collections.abc import Iterator

import pytest
import redis
import requests

from services.common.redisconn import parse_sentinel_url
from services.stack.processes import Child, free_port, redis_binary, redis_ready, wait_until
from tests.support.stack import RunningStack

PRIMARY = "wharf-primary"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class RedisHA:
    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary = self._redis("primary", self.primary_port)
        self.replica = self._redis("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        self.sentinel_ports = [free_port() for _ in range(3)]
        for index, port in enumerate(self.sentinel_ports):
            config = directory / f"sentinel-{index}.conf"
            config.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                              f"sentinel monitor {PRIMARY} 127.0.0.1 {self.primary_port} 2\n"
                              f"sentinel down-after-milliseconds {PRIMARY} 1000\n"
                              f"sentinel failover-timeout {PRIMARY} 5000\n")
            self._start(f"sentinel-{index}", [redis_binary(), str(config), "--sentinel"], port)
        self.url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{PRIMARY}/0"

    def _redis(self, name: str, port: int, *extra: str) -> Child:
        data = self.directory / name
        data.mkdir(parents=True)
        return self._start(name, [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                                  "--appendonly", "yes", "--save", "", *extra], port)

    def _start(self, name: str, argv: list[str], port: int) -> Child:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        child = Child(name, argv, dict(os.environ), address=f"127.0.0.1:{port}", output=log)
        self.children.append(child)
        wait_until(lambda: redis_ready("127.0.0.1", port), child, time.monotonic() + 30, name)
        return child

    def primary_address(self) -> tuple[str, int]:
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_timeout=2, decode_responses=True)
        host, port = sentinel.sentinel_get_master_addr_by_name(PRIMARY)
        return str(host), int(port)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


@pytest.fixture()
def ha(tmp_path: pathlib.Path) -> Iterator[RedisHA]:
    setup = RedisHA(tmp_path / "redis")
    try:
        yield setup
    finally:
        setup.stop()


def _push(url: str, repository: str, tag: str) -> str:
    config = f'{{"architecture":"amd64","os":"linux","tag":"{tag}"}}'.encode()
    digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
    response = requests.post(f"{url}/v2/{repository}/blobs/uploads/?digest={digest}", data=config, timeout=30)
    response.raise_for_status()
    manifest = (f'{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":'
                f'"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":{len(config)}}},'
                f'"layers":[]}}').encode()
    response = requests.put(f"{url}/v2/{repository}/manifests/{tag}", data=manifest, timeout=30,
                            headers={"Content-Type": OCI_MANIFEST})
    response.raise_for_status()
    return f"sha256:{hashlib.sha256(manifest).hexdigest()}"


def _get(url: str, repository: str, tag: str) -> requests.Response:
    return requests.get(f"{url}/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=30)


def test_sentinel_url_parsing() -> None:
    target = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/main/2"
                                "?sentinel_password=x")
    assert target is not None
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    assert (target.primary, target.db, target.password, target.sentinel_password) == ("main", 2, "s3cret", "x")
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    for bad in ("redis+sentinel://h:1/", "redis+sentinel://h:x/main", "redis+sentinel://h:1/main/db/extra"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


def test_the_stack_survives_a_failover(ha: RedisHA, tmp_path: pathlib.Path) -> None:
    stack = RunningStack(tmp_path / "wharf", {"WHARF_REDIS_URL": ha.url}).start()
    try:
        before = _push(stack.url, "ha/app", "v1")
        assert _get(stack.url, "ha/app", "v1").headers["Docker-Content-Digest"] == before
        replica = redis.Redis(port=ha.replica_port, socket_timeout=2)
        deadline = time.monotonic() + 20
        while replica.hget("wharf:repo:{ha/app}:tags", "v1") is None:  # replication is asynchronous
            assert time.monotonic() < deadline, "the replica never received the tag"
            time.sleep(0.1)

        os.killpg(ha.primary.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while ha.primary_address() != ("127.0.0.1", ha.replica_port):
            assert time.monotonic() < deadline, "sentinels did not promote the replica"
            time.sleep(0.2)

        after = None
        while after is None:
            assert time.monotonic() < deadline, "the stack never recovered after the failover"
            try:
                after = _push(stack.url, "ha/app", "v2")
            except requests.HTTPError as err:
                assert err.response.status_code == 503, err.response.text  # failing over, never another error
                time.sleep(0.3)
        for tag, digest in (("v1", before), ("v2", after)):
            response = _get(stack.url, "ha/app", tag)
            assert response.status_code == 200 and response.headers["Docker-Content-Digest"] == digest
    finally:
        stack.stop()


def test_the_auth_service_finds_its_redis_through_sentinel(ha: RedisHA, tmp_path: pathlib.Path) -> None:
    stack = RunningStack(tmp_path / "wharf", {"WHARF_REDIS_URL": ha.url, "WHARF_AUTH": "token",
                                              "WHARF_ADMIN_PASSWORD": "sentinel-admin", "WHARF_BCRYPT_ROUNDS": "4"})
    stack.start()
    try:
        response = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": "repository:ha/x:push"},
                                auth=("admin", "sentinel-admin"), timeout=30)
        assert response.status_code == 200 and response.json()["token"]
        assert redis.Redis(port=ha.primary_port).keys("wharf-auth:*")  # the accounts live on the primary
    finally:
        stack.stop()
