"""Trust between the services: reaching a gRPC port is not enough (docs/security.md)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.internal_auth import TOKEN_KEY
from services.gen.wharf.auth.v1 import auth_pb2 as apb
from services.gen.wharf.auth.v1 import auth_pb2_grpc as apb_grpc
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as bpb_grpc
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.gen.wharf.metadata.v1 import metadata_pb2_grpc as mpb_grpc
from tests.security.conftest import ADMIN_PASSWORD, push_image, service_env
from tests.support.stack import RunningStack


@pytest.fixture(scope="module")
def envs(target: RunningStack) -> dict[str, dict[str, str]]:
    found = service_env(target)
    assert set(found) == {"metadata", "blobstore", "auth", "gateway"}, found.keys()
    return found


def _calls(envs: dict[str, dict[str, str]]) -> list[tuple[str, object]]:
    """One call per service that leaked or changed something when made without credentials."""
    metadata = grpc.insecure_channel(envs["metadata"]["WHARF_METADATA_LISTEN"])
    blobstore = grpc.insecure_channel(envs["blobstore"]["WHARF_BLOBSTORE_LISTEN"])
    auth = grpc.insecure_channel(envs["auth"]["WHARF_AUTH_LISTEN"])
    return [
        ("FilterRepositories", lambda md: apb_grpc.AuthStub(auth).FilterRepositories(
            apb.FilterRepositoriesRequest(account="a", repositories=["a/hidden-1"]), timeout=10, metadata=md)),
        ("IssueToken", lambda md: apb_grpc.AuthStub(auth).IssueToken(
            apb.IssueTokenRequest(username="a", password="wrong-password", client_address="203.0.113.9"),
            timeout=10, metadata=md)),
        ("ListRepositories", lambda md: mpb_grpc.MetadataStub(metadata).ListRepositories(
            mpb.ListRequest(limit=100), timeout=10, metadata=md)),
        ("DeleteTag", lambda md: mpb_grpc.MetadataStub(metadata).DeleteTag(
            mpb.ManifestRef(repository="a/hidden-1", reference="v1"), timeout=10, metadata=md)),
        # Garbage collection's calls: without the token nobody may remove, fence or pin.
        ("CollectRepository", lambda md: mpb_grpc.MetadataStub(metadata).CollectRepository(
            mpb.CollectRequest(repository="a/hidden-1"), timeout=10, metadata=md)),
        ("BeginBlobDelete", lambda md: mpb_grpc.MetadataStub(metadata).BeginBlobDelete(
            mpb.BlobDeleteRequest(digest="sha256:" + "0" * 64), timeout=10, metadata=md)),
        ("PinBlob", lambda md: mpb_grpc.MetadataStub(metadata).PinBlob(
            mpb.BlobRef(digest="sha256:" + "0" * 64), timeout=10, metadata=md)),
        ("CreateUpload", lambda md: bpb_grpc.BlobStoreStub(blobstore).CreateUpload(
            bpb.CreateUploadRequest(repository="x/y"), timeout=10, metadata=md)),
    ]


@pytest.mark.parametrize("presented", [None, "", "not-the-secret", "x" * 64])
def test_internal_services_refuse_callers_without_the_token(envs: dict[str, dict[str, str]],
                                                            presented: str | None) -> None:
    metadata = () if presented is None else ((TOKEN_KEY, presented),)
    for name, call in _calls(envs):
        with pytest.raises(grpc.RpcError) as info:
            call(metadata)  # type: ignore[operator]
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name


def test_the_right_token_is_accepted_and_health_is_open(target: RunningStack,
                                                        envs: dict[str, dict[str, str]]) -> None:
    push_image(target, "a", "a/trusted")
    with open(envs["metadata"]["WHARF_INTERNAL_TOKEN_FILE"]) as handle:
        secret = handle.read().strip()
    listed = _calls(envs)[2][1](((TOKEN_KEY, secret),))  # type: ignore[operator]
    assert "a/trusted" in listed.names
    for variable in ("WHARF_METADATA_LISTEN", "WHARF_BLOBSTORE_LISTEN"):
        role = "metadata" if "METADATA" in variable else "blobstore"
        with grpc.insecure_channel(envs[role][variable]) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_the_token_file_is_private(envs: dict[str, dict[str, str]]) -> None:
    import os
    import stat

    mode = os.stat(envs["gateway"]["WHARF_INTERNAL_TOKEN_FILE"]).st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_the_admin_password_reaches_only_the_auth_service(envs: dict[str, dict[str, str]]) -> None:
    assert envs["auth"].get("WHARF_ADMIN_PASSWORD") == ADMIN_PASSWORD
    for role in ("gateway", "metadata", "blobstore"):
        assert "WHARF_ADMIN_PASSWORD" not in envs[role], role
        assert ADMIN_PASSWORD not in "".join(envs[role].values()), role
