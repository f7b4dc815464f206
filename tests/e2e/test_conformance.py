"""The OCI distribution-spec conformance suite against the real stack, with every option on.

The suite exits 0 even when it skips tests (a skip usually means "the registry
does not support this"), so the verdict comes from the count lines it prints,
and Skip/Disabled must be zero like FAIL and Error.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import uuid
from collections.abc import Callable

import pytest

from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

CONFORMANCE_MODULE = "github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111"

# Every optional API and data option of the pinned suite, on.
ALL_OPTIONS = (
    "OCI_API_PING", "OCI_API_PULL", "OCI_API_PUSH", "OCI_API_REFERRER",
    "OCI_API_BLOBS_ATOMIC", "OCI_API_BLOBS_DELETE", "OCI_API_BLOBS_DIGEST_HEADER",
    "OCI_API_BLOBS_MOUNT_ANONYMOUS", "OCI_API_BLOBS_UPLOAD_CANCEL",
    "OCI_API_MANIFESTS_ATOMIC", "OCI_API_MANIFESTS_DELETE", "OCI_API_MANIFESTS_DIGEST_HEADER",
    "OCI_API_MANIFESTS_TAG_PARAM",
    "OCI_API_TAGS_ATOMIC", "OCI_API_TAGS_DELETE", "OCI_API_TAGS_LIST",
    "OCI_DATA_IMAGE", "OCI_DATA_INDEX", "OCI_DATA_INDEX_LIST", "OCI_DATA_SPARSE", "OCI_DATA_ARTIFACT",
    "OCI_DATA_SUBJECT", "OCI_DATA_SUBJECT_MISSING", "OCI_DATA_ARTIFACT_LIST", "OCI_DATA_SUBJECT_LIST",
    "OCI_DATA_DATA_FIELD", "OCI_DATA_NONDISTRIBUTABLE", "OCI_DATA_CUSTOM_FIELDS", "OCI_DATA_NO_LAYERS",
    "OCI_DATA_EMPTY_BLOB", "OCI_DATA_SHA512",
)

COUNT_LINE = re.compile(r"^\s+(Disabled|Skip|Pass|FAIL|Error|Total)\.+:\s+(\d+)$", re.MULTILINE)
TREE_LINE = re.compile(r"^\s*OCI Conformance Test.*: (Pass|Skip|FAIL|Error|Disabled)$")


def conformance_env(registry: str, results_dir: pathlib.Path) -> dict[str, str]:
    """The suite's environment: no inherited OCI_* at all, since legacy ones (OCI_ROOT_URL,
    OCI_TAG_NAME, ...) and OCI_CONFIGURATION change what it runs."""
    run_id = uuid.uuid4().hex[:12]
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OCI_")}
    environ.update({
        "OCI_REGISTRY": registry, "OCI_TLS": "disabled",
        "OCI_REPO1": f"conformance/{run_id}/repo1", "OCI_REPO2": f"conformance/{run_id}/repo2",
        "OCI_RESULTS_DIR": str(results_dir), "OCI_LOG": "warn", "OCI_VERSION": "1.1", "OCI_CACHE_AUTH": "true",
    })
    environ.update(dict.fromkeys(ALL_OPTIONS, "true"))
    return environ


def parse_counts(stdout: str) -> dict[str, int]:
    return {name: int(value) for name, value in COUNT_LINE.findall(stdout)}


def failing_lines(stdout: str, limit: int = 200) -> str:
    """Tree lines that did not pass, each with the error lines printed under it."""
    kept: list[str] = []
    keep = False
    for line in stdout.split("OCI Conformance Result:")[0].splitlines():
        tree = TREE_LINE.match(line)
        if tree:
            keep = tree.group(1) != "Pass"
        if keep:
            kept.append(line)
    return "\n".join(kept[:limit]) + ("\n..." if len(kept) > limit else "")


def run_suite(binary: str, stack: RunningStack, tmp_path: pathlib.Path, credentials: tuple[str, str] | None = None,
              off: tuple[str, ...] = ()) -> dict[str, int]:
    """Runs the suite against ``stack``; asserts nothing failed or was skipped; returns the counts."""
    results_dir = tmp_path / "results"
    environ = conformance_env(stack.host, results_dir)
    if credentials:
        environ["OCI_USERNAME"], environ["OCI_PASSWORD"] = credentials
    environ.update(dict.fromkeys(off, "false"))
    # cwd = tmp_path: the suite reads ./oci-conformance.yaml when present, and tmp_path has none.
    run = subprocess.run([binary], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=900)
    counts = parse_counts(run.stdout)
    summary = f"counts={counts} exit={run.returncode} report={results_dir / 'report.html'}"
    assert {"Pass", "FAIL", "Skip", "Error", "Disabled"} <= counts.keys(), \
        f"no count lines in the output; {summary}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    bad = {name: counts[name] for name in ("FAIL", "Skip", "Error") if counts[name]}
    if not off:
        bad.update({"Disabled": counts["Disabled"]} if counts["Disabled"] else {})
    assert not bad, f"{summary}\n{failing_lines(run.stdout)}\nstack log:\n{stack.log_tail()}"
    assert counts["Pass"] > 900, summary
    return counts


SPARSE = {"WHARF_ALLOW_SPARSE_MANIFESTS": "true"}


def conformance_binary() -> str:
    return require_tool("conformance", f"go install {CONFORMANCE_MODULE}")


def test_conformance_suite_passes_with_every_option_on(start_stack: Callable[..., RunningStack],
                                                        tmp_path: pathlib.Path) -> None:
    binary = conformance_binary()
    run_suite(binary, start_stack(env=SPARSE), tmp_path)


def test_conformance_in_token_mode(start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> None:
    """Issue 3: the same suite through the token flow, as the admin."""
    binary = conformance_binary()
    stack = start_stack(env={**SPARSE, "WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": "conformance-admin-1",
                             "WHARF_BCRYPT_ROUNDS": "4"})
    run_suite(binary, stack, tmp_path, credentials=("admin", "conformance-admin-1"))


@pytest.mark.parametrize("server", ["seaweedfs", "minio"])
def test_conformance_on_s3_streaming_through_the_gateway(start_stack: Callable[..., RunningStack],
                                                         tmp_path: pathlib.Path, request: pytest.FixtureRequest,
                                                         server: str) -> None:
    """Issue 4: every option on, with blobs in S3 (redirects off, so the gateway serves the bytes)."""
    binary = conformance_binary()
    s3_server = request.getfixturevalue(server)
    run_suite(binary, start_stack(env={**SPARSE, **s3_server.env(), "WHARF_S3_REDIRECT": "false"}), tmp_path)


def test_conformance_on_s3_with_redirects(start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path,
                                          seaweedfs: object) -> None:
    """With redirects the blob bytes come from S3, whose responses cannot carry Docker-Content-Digest;
    every other option stays on (Distribution's redirects have the same property)."""
    binary = conformance_binary()
    stack = start_stack(env={**SPARSE, **seaweedfs.env()})  # type: ignore[attr-defined]
    run_suite(binary, stack, tmp_path, off=("OCI_API_BLOBS_DIGEST_HEADER",))
