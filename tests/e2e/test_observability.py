"""Issue 14 against the running stack: every service's /metrics after a real push and pull
(skopeo), the gateway's workers added up into one exposition, promtool's verdict, and one
trace per request across the gateway, the metadata service, Redis and the blob store.

The stacks are started by the runner (`make run`'s wharf-stack), which turns the figures on
by default and writes where they are to ``$WHARF_DATA_DIR/metrics.json``; the traces go to a
small OTLP/HTTP receiver in this process (tests/support/otlp.py), as they would to a collector.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest
import requests

from services.api.routes import ROUTES
from tests.e2e.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, canonical_json, random_layer, sha256
from tests.e2e.test_skopeo import Skopeo
from tests.support import otlp
from tests.support.prometheus import Figures, exact, scrape, value
from tests.support.pusher import push_blob
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

REPOSITORY = "obs/img"
LAYER_SIZE = 256 * 1024
ADMIN_PASSWORD = "obs-admin-pw1"
ROUTE_NAMES = {route.endpoint for route in ROUTES} | {"none"}


# -- helpers ---------------------------------------------------------------------------------

def start(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> RunningStack:
    # Access log on (RunningStack turns it off): the log tests read it.
    return RunningStack(tmp_path_factory.mktemp(name), {"WHARF_ACCESS_LOG": "true", **env}).start()


def log_lines(stack: RunningStack) -> list[dict[str, object]]:
    lines = []
    for line in stack.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


# -- the untraced stack, a push and a pull -----------------------------------------------------

@pytest.fixture(scope="module")
def plain_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The runner's defaults: figures on (WHARF_STACK_METRICS is not set), traces off."""
    stack = start(tmp_path_factory, "obs-plain", WHARF_OTLP_ENDPOINT="")
    yield stack
    stack.stop()


@dataclasses.dataclass(frozen=True)
class Pushed:
    layer: int  # bytes of the layer
    blobs: int  # bytes of every blob (config and layer)
    manifest: bytes
    digests: tuple[str, ...]


def write_oci_layout(layout: pathlib.Path, tag: str) -> Pushed:
    """A single-platform OCI image layout: one random layer, its config and manifest."""
    layer, diff_id = random_layer(LAYER_SIZE)
    config = canonical_json({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                                                               "diff_ids": [diff_id]}})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(layer), "size": len(layer)}]})
    (layout / "blobs" / "sha256").mkdir(parents=True)
    for data in (layer, config, manifest):
        (layout / "blobs" / "sha256" / sha256(data).removeprefix("sha256:")).write_bytes(data)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return Pushed(len(layer), len(layer) + len(config), manifest, (sha256(layer), sha256(config), sha256(manifest)))


@pytest.fixture(scope="module")
def pushed(plain_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """An image pushed to the plain stack with skopeo, and pulled back."""
    work = tmp_path_factory.mktemp("obs-image")
    skopeo = Skopeo(require_tool("skopeo"), work / "home")
    image = write_oci_layout(work / "in", "v1")
    reference = f"docker://{plain_stack.host}/{REPOSITORY}:v1"
    skopeo.copy(f"oci:{work / 'in'}:v1", reference)
    skopeo.copy(reference, f"oci:{work / 'out'}:v1")
    [pulled] = json.loads((work / "out" / "index.json").read_text())["manifests"]
    assert pulled["digest"] == image.digests[-1]
    return image


def test_a_push_and_a_pull_show_in_every_services_figures(plain_stack: RunningStack, pushed: Pushed) -> None:
    def pulled(figures: Figures) -> bool:
        return value(figures["gateway"], "wharf_http_requests_total", route="blob", method="GET", status="200") >= 2

    figures, _ = scrape(plain_stack, pulled)
    assert set(figures) == {"gateway", "metadata", "blobstore-0"}
    gateway, metadata, blobstore = figures["gateway"], figures["metadata"], figures["blobstore-0"]

    requests_total = "wharf_http_requests_total"
    assert value(gateway, requests_total, route="manifest", method="PUT", status="201") >= 1
    assert value(gateway, requests_total, route="uploads", method="POST", status="202") >= 2
    assert value(gateway, requests_total, route="upload", method="PUT", status="201") >= 2
    assert value(gateway, requests_total, route="blob", method="GET", status="200") >= 2
    assert value(gateway, requests_total, route="manifest", method="GET", status="200") >= 1
    received = value(gateway, "wharf_http_received_bytes_total", route="upload") + \
        value(gateway, "wharf_http_received_bytes_total", route="uploads")
    assert received >= pushed.blobs
    assert value(gateway, "wharf_http_received_bytes_total", route="manifest") >= len(pushed.manifest)
    assert value(gateway, "wharf_http_sent_bytes_total", route="blob") >= pushed.blobs
    assert value(gateway, "wharf_http_sent_bytes_total", route="manifest") >= len(pushed.manifest)
    # Every answered request is counted once and timed once, in the same place.
    answered: dict[tuple[str, str], float] = {}
    for sample in gateway:
        if sample.name == requests_total:
            key = (sample.labels["route"], sample.labels["method"])
            answered[key] = answered.get(key, 0) + sample.value
    timed = {(s.labels["route"], s.labels["method"]): s.value for s in gateway
             if s.name == "wharf_http_request_duration_seconds_count"}
    assert timed == answered
    for (route, method), count in timed.items():
        assert exact(gateway, "wharf_http_request_duration_seconds_bucket", route=route, method=method,
                     le="+Inf") == count

    metadata_service, blob_service = "wharf.metadata.v1.Metadata", "wharf.blobstore.v1.BlobStore"
    for service, method, at_least in [(metadata_service, "PutManifest", 1), (metadata_service, "LinkBlob", 2),
                                       (blob_service, "CommitUpload", 2)]:
        assert (exact(gateway, "wharf_grpc_client_calls_total", grpc_service=service, grpc_method=method,
                      grpc_code="OK") or 0) >= at_least, (service, method)
    for samples, service, method, at_least in [(metadata, metadata_service, "PutManifest", 1),
                                               (metadata, metadata_service, "LinkBlob", 2),
                                               (blobstore, blob_service, "CommitUpload", 2)]:
        assert (exact(samples, "wharf_grpc_server_calls_total", grpc_service=service, grpc_method=method,
                      grpc_code="OK") or 0) >= at_least, (service, method)
    # Each layer's bytes arrived in an append (a small body's in one message, AppendUploadSingle).
    appends = sum(exact(blobstore, "wharf_grpc_server_calls_total", grpc_service=blob_service, grpc_method=method,
                        grpc_code="OK") or 0 for method in ("AppendUpload", "AppendUploadSingle"))
    assert appends >= 2
    # The gateway is the only caller here: both ends of each connection count the same calls.
    for samples, service in [(metadata, metadata_service), (blobstore, blob_service)]:
        called = {tuple(sorted(s.labels.items())): s.value for s in gateway
                  if s.name == "wharf_grpc_client_calls_total" and s.labels["grpc_service"] == service}
        served = {tuple(sorted(s.labels.items())): s.value for s in samples
                  if s.name == "wharf_grpc_server_calls_total" and s.labels["grpc_service"] == service}
        assert called == served, service

    assert value(blobstore, "wharf_storage_operation_duration_seconds_count") >= 1
    assert value(blobstore, "wharf_storage_operation_duration_seconds_count", driver="filesystem",
                 operation="writer") >= 1
    assert (exact(blobstore, "wharf_storage_bytes_total", direction="written") or 0) >= pushed.layer
    assert (exact(metadata, "wharf_redis_script_duration_seconds_count", script="put_manifest") or 0) >= 1
    for name, samples in figures.items():
        assert (exact(samples, "process_resident_memory_bytes") or 0) > 0, name


def test_labels_never_name_a_repository_or_a_digest(plain_stack: RunningStack, pushed: Pushed) -> None:
    """Bounded cardinality: route names, not paths; no repository, tag or digest anywhere."""
    figures, texts = scrape(plain_stack)
    for name, samples in figures.items():
        for sample in samples:
            for label, text in sample.labels.items():
                assert REPOSITORY not in text and "sha256:" not in text, (name, sample)
                if label == "route":
                    assert text in ROUTE_NAMES, (name, sample)
        for digest in pushed.digests:
            assert digest.removeprefix("sha256:") not in texts[name], (name, digest)
        assert REPOSITORY not in texts[name], name


def test_each_service_says_once_which_build_it_runs(plain_stack: RunningStack) -> None:
    figures, _ = scrape(plain_stack)
    for name, samples in figures.items():
        info = [s for s in samples if s.name == "wharf_build_info"]
        assert [(s.labels.get("service"), s.value) for s in info] == [(name.removesuffix("-0"), 1.0)], name


def test_promtool_accepts_every_services_exposition(plain_stack: RunningStack, pushed: Pushed,
                                                    token_stack: RunningStack) -> None:
    """The plain stack's services after the push and pull, and the auth service of a token-mode stack."""
    promtool = require_tool("promtool", "go install github.com/prometheus/prometheus/cmd/promtool")
    _, texts = scrape(plain_stack)
    _, token_texts = scrape(token_stack)
    for name, text in [*texts.items(), ("auth", token_texts["auth"])]:
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=60)
        # 0: parsed, and no lint problem (promtool exits 3 for a lint problem, 1 for a parse error).
        assert result.returncode == 0, f"{name}: promtool exit {result.returncode}:\n{result.stdout}{result.stderr}"


def _get_base(url: str) -> int:
    """GET /v2/ on a connection of its own (so that the workers share them out)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/v2/", headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_the_gateway_adds_up_its_workers(plain_stack: RunningStack) -> None:
    """WHARF_GATEWAY_WORKERS defaults to 2; the master's /metrics must count every worker's requests."""
    count = 200
    base = {"route": "base", "method": "GET", "status": "200"}
    figures, _ = scrape(plain_stack)
    before = exact(figures["gateway"], "wharf_http_requests_total", **base) or 0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(_get_base, [plain_stack.url] * count))
    assert statuses == [200] * count

    def counted(figures: Figures) -> bool:
        return (exact(figures["gateway"], "wharf_http_requests_total", **base) or 0) - before >= count

    figures, _ = scrape(plain_stack, counted)
    assert (exact(figures["gateway"], "wharf_http_requests_total", **base) or 0) - before == count
    assert (exact(figures["gateway"], "wharf_http_request_duration_seconds_count", route="base", method="GET")
            or 0) >= before + count


def test_without_tracing_log_lines_name_no_trace(plain_stack: RunningStack, pushed: Pushed) -> None:
    lines = log_lines(plain_stack)
    assert any(line.get("msg") == "http" for line in lines), plain_stack.log_tail()
    assert [line for line in lines if "trace_id" in line] == []


# -- the auth service (token mode) ------------------------------------------------------------

@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    stack = start(tmp_path_factory, "obs-token", WHARF_OTLP_ENDPOINT="", WHARF_AUTH="token",
                  WHARF_ADMIN_PASSWORD=ADMIN_PASSWORD, WHARF_BCRYPT_ROUNDS="4")
    yield stack
    stack.stop()


def test_the_auth_service_counts_tokens(token_stack: RunningStack) -> None:
    scope = {"service": "wharf", "scope": f"repository:{REPOSITORY}:pull,push"}
    issued = requests.get(f"{token_stack.url}/token", params=scope, auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert issued.status_code == 200, issued.text
    refused = requests.get(f"{token_stack.url}/token", params=scope, auth=("admin", "wrong-password"), timeout=30)
    assert refused.status_code == 401, refused.text

    figures, _ = scrape(token_stack, lambda f: value(f["auth"], "wharf_auth_token_refusals_total") >= 1)
    assert set(figures) == {"gateway", "metadata", "blobstore-0", "auth"}
    auth = figures["auth"]
    assert (exact(auth, "wharf_auth_tokens_issued_total", kind="user") or 0) >= 1
    assert (exact(auth, "wharf_auth_token_refusals_total", reason="credentials") or 0) >= 1
    issue = {"grpc_service": "wharf.auth.v1.Auth", "grpc_method": "IssueToken"}
    assert (exact(auth, "wharf_grpc_server_calls_total", **issue, grpc_code="OK") or 0) >= 1
    assert value(auth, "wharf_grpc_server_calls_total", **issue) >= 2
    assert value(figures["gateway"], "wharf_grpc_client_calls_total", **issue) >= 2
    assert (exact(auth, "process_resident_memory_bytes") or 0) > 0
    for sample in auth:
        assert not {"admin", REPOSITORY} & set(sample.labels.values()), sample


# -- traces ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, receiver: otlp.OtlpReceiver) -> Iterator[RunningStack]:
    # The SDK's batch processor reads OTEL_BSP_SCHEDULE_DELAY: spans leave in 0.2 s, not 5.
    stack = start(tmp_path_factory, "obs-traced", WHARF_OTLP_ENDPOINT=receiver.endpoint,
                  OTEL_BSP_SCHEDULE_DELAY="200")
    yield stack
    stack.stop()


@dataclasses.dataclass(frozen=True)
class Traced:
    """A request sent with the client's own trace context."""

    trace_id: str
    client_span_id: str
    request_id: str  # the X-Request-Id the gateway answered with


def traceparent() -> tuple[str, str, dict[str, str]]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


@pytest.fixture(scope="module")
def traced_manifest_put(traced_stack: RunningStack) -> Traced:
    repository = "obs/traced"
    layer = os.urandom(64 * 1024)
    config = canonical_json({"architecture": "amd64", "os": "linux"})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": push_blob([traced_stack.url], repository, config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": push_blob([traced_stack.url], repository, layer), "size": len(layer)}]})
    trace_id, span_id, headers = traceparent()
    response = requests.put(f"{traced_stack.url}/v2/{repository}/manifests/v1", data=manifest, timeout=30,
                            headers={"Content-Type": OCI_MANIFEST, **headers})
    assert response.status_code == 201, response.text
    return Traced(trace_id, span_id, response.headers["X-Request-Id"])


@pytest.fixture(scope="module")
def traced_blob_upload(traced_stack: RunningStack) -> Traced:
    repository = "obs/traced"
    blob = os.urandom(32 * 1024)
    started = requests.post(f"{traced_stack.url}/v2/{repository}/blobs/uploads/", timeout=30)
    assert started.status_code == 202, started.text
    trace_id, span_id, headers = traceparent()
    response = requests.put(traced_stack.url + started.headers["Location"], params={"digest": sha256(blob)},
                            data=blob, timeout=30, headers={"Content-Type": "application/octet-stream", **headers})
    assert response.status_code == 201, response.text
    return Traced(trace_id, span_id, response.headers["X-Request-Id"])


def trace_of(receiver: otlp.OtlpReceiver, traced: Traced, *needed: otlp.SpanTest) -> list[otlp.ReceivedSpan]:
    return receiver.trace(traced.trace_id, traced.client_span_id, *needed)


def gateway_server_span(spans: list[otlp.ReceivedSpan], traced: Traced, name: str) -> otlp.ReceivedSpan:
    server = otlp.one(spans, "the gateway's server span", otlp.served_by("wharf-gateway"))
    assert server.name == name
    assert server.parent_span_id == traced.client_span_id  # the client's traceparent was adopted
    return server


def test_a_manifest_put_is_one_trace_from_the_client_to_redis(receiver: otlp.OtlpReceiver,
                                                            traced_manifest_put: Traced) -> None:
    traced = traced_manifest_put
    spans = trace_of(receiver, traced, otlp.named("wharf-gateway", "PUT manifest"),
                     otlp.named("wharf-metadata", "wharf.metadata.v1.Metadata/PutManifest"),
                     otlp.named("wharf-metadata", "redis put_manifest"))
    server = gateway_server_span(spans, traced, "PUT manifest")
    assert server.attributes.get("http.route") == "manifest"
    assert server.attributes.get("http.response.status_code") == 201
    by_id = {s.span_id: s for s in spans}
    metadata = otlp.one(spans, "the metadata service's PutManifest",
                        otlp.named("wharf-metadata", "wharf.metadata.v1.Metadata/PutManifest"))
    caller = by_id[metadata.parent_span_id]
    assert (caller.service, caller.kind, caller.parent_span_id) == ("wharf-gateway", otlp.CLIENT, server.span_id)
    assert metadata.attributes.get("wharf.request_id") == traced.request_id
    script = otlp.one(spans, "the put_manifest script", lambda s: s.name == "redis put_manifest")
    assert (script.service, script.parent_span_id) == ("wharf-metadata", metadata.span_id)


def test_the_gateways_server_span_carries_the_request_id(receiver: otlp.OtlpReceiver,
                                                         traced_manifest_put: Traced) -> None:
    spans = trace_of(receiver, traced_manifest_put, otlp.named("wharf-gateway", "PUT manifest"))
    server = gateway_server_span(spans, traced_manifest_put, "PUT manifest")
    assert server.attributes.get("wharf.request_id") == traced_manifest_put.request_id


def test_a_blob_upload_is_traced_into_the_storage(receiver: otlp.OtlpReceiver, traced_blob_upload: Traced) -> None:
    traced = traced_blob_upload
    spans = trace_of(receiver, traced, otlp.named("wharf-gateway", "PUT upload"),
                     otlp.served_by("wharf-blobstore"),
                     lambda span: span.service == "wharf-blobstore" and span.name.startswith("storage "))
    server = gateway_server_span(spans, traced, "PUT upload")
    assert server.attributes.get("wharf.request_id") == traced.request_id
    by_id = {s.span_id: s for s in spans}
    stores = [s for s in spans if otlp.served_by("wharf-blobstore")(s)]
    assert stores, "no blob store server span:\n" + "\n".join(map(str, spans))
    for store in stores:
        caller = by_id[store.parent_span_id]
        assert (caller.service, caller.kind, caller.parent_span_id) == ("wharf-gateway", otlp.CLIENT,
                                                                        server.span_id)
        assert store.attributes.get("wharf.request_id") == traced.request_id
    store_ids = {s.span_id for s in stores}
    storage = [s for s in spans if s.name.startswith("storage ") and s.parent_span_id in store_ids]
    assert storage, "no storage span under a blob store call:\n" + "\n".join(map(str, spans))
    assert {s.service for s in storage} == {"wharf-blobstore"}


def test_the_access_log_line_names_the_trace(traced_stack: RunningStack, traced_manifest_put: Traced) -> None:
    [line] = [line for line in log_lines(traced_stack)
              if line.get("msg") == "http" and line.get("request_id") == traced_manifest_put.request_id]
    assert line.get("trace_id") == traced_manifest_put.trace_id


def test_the_services_call_log_lines_name_the_trace(traced_stack: RunningStack,
                                                    traced_manifest_put: Traced) -> None:
    calls = [line for line in log_lines(traced_stack)
             if line.get("msg") == "rpc" and line.get("request_id") == traced_manifest_put.request_id]
    assert calls, "no rpc line for the request"
    assert {line.get("trace_id") for line in calls} == {traced_manifest_put.trace_id}, calls
