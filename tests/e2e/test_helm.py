"""Helm 3 (helm.sh/helm, Go) charts as OCI artifacts: package, push, show, pull, install-free
template from the registry; and registry login in token mode."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess

import pytest

from tests.e2e.test_token_clients import PASSWORD, USER, secure  # noqa: F401 - the token-mode stack fixture
from tests.support.stack import RunningStack
from tests.support.tools import isolated_env, require_tool

pytestmark = pytest.mark.e2e

HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.22.0"


class Helm:
    def __init__(self, binary: str, home: pathlib.Path) -> None:
        self.binary = binary
        self.env = isolated_env(home, "HELM_")
        self.env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                        HELM_DATA_HOME=str(home / "data"))

    def run(self, *args: str, cwd: pathlib.Path, check: bool = True) -> str:
        result = subprocess.run([self.binary, *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                                timeout=120)
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr


@pytest.fixture()
def helm(tmp_path: pathlib.Path) -> Helm:
    return Helm(require_tool("helm", f"go install {HELM_MODULE}"), tmp_path / "helm-home")


def _package(helm: Helm, where: pathlib.Path, name: str) -> pathlib.Path:
    helm.run("create", name, cwd=where)
    helm.run("package", name, "--version", "0.1.0", cwd=where)
    return where / f"{name}-0.1.0.tgz"


def test_push_show_pull_template(helm: Helm, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    chart = _package(helm, tmp_path, "wharfchart")
    pushed = helm.run("push", str(chart), f"oci://{stack.host}/charts", "--plain-http", cwd=tmp_path)
    assert "Digest: sha256:" in pushed
    reference = f"oci://{stack.host}/charts/wharfchart"
    assert "name: wharfchart" in helm.run("show", "chart", reference, "--version", "0.1.0", "--plain-http",
                                          cwd=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    helm.run("pull", reference, "--version", "0.1.0", "--plain-http", "-d", str(out), cwd=tmp_path)
    pulled = out / chart.name
    assert hashlib.sha256(pulled.read_bytes()).digest() == hashlib.sha256(chart.read_bytes()).digest()
    rendered = helm.run("template", "demo", reference, "--version", "0.1.0", "--plain-http", cwd=tmp_path)
    assert "kind: Deployment" in rendered


def test_login_and_push_with_tokens(helm: Helm, secure: RunningStack, tmp_path: pathlib.Path) -> None:  # noqa: F811
    chart = _package(helm, tmp_path, "securechart")
    # Anonymously: the anonymous token holds no push right, so the push is denied (403).
    refused = helm.run("push", str(chart), f"oci://{secure.host}/{USER}", "--plain-http", cwd=tmp_path, check=False)
    assert "403" in refused, refused
    wrong = helm.run("registry", "login", secure.host, "-u", USER, "-p", "not-the-password", "--insecure",
                     cwd=tmp_path, check=False)
    assert "401" in wrong or "unauthorized" in wrong.lower() or "failed" in wrong.lower()
    helm.run("registry", "login", secure.host, "-u", USER, "-p", PASSWORD, "--insecure", cwd=tmp_path)
    helm.run("push", str(chart), f"oci://{secure.host}/{USER}", "--plain-http", cwd=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    helm.run("pull", f"oci://{secure.host}/{USER}/securechart", "--version", "0.1.0", "--plain-http", "-d", str(out),
             cwd=tmp_path)
    assert (out / chart.name).read_bytes() == chart.read_bytes()


def test_wharfs_own_chart_round_trips_through_wharf(helm: Helm, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    """deploy/helm/wharf, packaged, pushed to Wharf as an OCI artifact, pulled back and templated
    from there, renders exactly as the chart in the repository does."""
    chart_dir = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "helm" / "wharf"
    helm.run("package", str(chart_dir), "-d", str(tmp_path), cwd=tmp_path)
    [chart] = tmp_path.glob("wharf-*.tgz")
    version = chart.name[len("wharf-"):-len(".tgz")]
    helm.run("push", str(chart), f"oci://{stack.host}/charts", "--plain-http", cwd=tmp_path)
    reference = f"oci://{stack.host}/charts/wharf"
    pulled_dir = tmp_path / "pulled"
    pulled_dir.mkdir()
    helm.run("pull", reference, "--version", version, "--plain-http", "-d", str(pulled_dir), cwd=tmp_path)
    [pulled] = pulled_dir.glob("wharf-*.tgz")
    assert pulled.read_bytes() == chart.read_bytes()
    from_registry = helm.run("template", "wharf", str(pulled), cwd=tmp_path)
    local = helm.run("template", "wharf", str(chart_dir), cwd=tmp_path)

    def without_random(text: str) -> list[str]:  # generated secrets differ on every render
        return [line for line in text.splitlines() if not line.strip().startswith(("token:", "password:"))
                and "checksum/" not in line and not line.startswith("Pulled:") and not line.startswith("Digest:")]
    assert without_random(from_registry) == without_random(local)
