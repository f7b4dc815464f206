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


def test_conformance_suite_passes_with_every_option_on(start_stack: Callable[..., RunningStack],
                                                        tmp_path: pathlib.Path) -> None:
    binary = require_tool("conformance", f"go install {CONFORMANCE_MODULE}")
    stack = start_stack(env={"WHARF_ALLOW_SPARSE_MANIFESTS": "true"})
    results_dir = tmp_path / "results"
    # cwd = tmp_path: the suite reads ./oci-conformance.yaml when present, and tmp_path has none.
    run = subprocess.run([binary], cwd=tmp_path, env=conformance_env(stack.host, results_dir),
                         capture_output=True, text=True, timeout=600)
    counts = parse_counts(run.stdout)
    summary = f"counts={counts} exit={run.returncode} report={results_dir / 'report.html'}"
    assert {"Pass", "FAIL", "Skip", "Error", "Disabled"} <= counts.keys(), \
        f"no count lines in the output; {summary}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    bad = {name: counts[name] for name in ("FAIL", "Skip", "Error", "Disabled") if counts[name]}
    assert not bad, f"{summary}\n{failing_lines(run.stdout)}\nstack log:\n{stack.log_tail()}"
    assert counts["Pass"] > 1000, summary
