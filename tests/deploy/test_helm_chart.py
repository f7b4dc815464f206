"""deploy/helm/wharf: `helm lint`, and `helm template` with the default and the production values,
every object valid against the Kubernetes schemas, every container given only settings its
service declares, pods unprivileged with limits, and the choices the values make."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from services.api.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.blobstore.settings import BlobStoreSettings
from services.common.settings import load, variables
from services.metadata.settings import MetadataSettings
from tests.deploy.deployfiles import KUBERNETES_VERSIONS, schema_errors
from tests.support.tools import require_tool

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "wharf"
PRODUCTION = CHART / "ci" / "production-values.yaml"
SETTINGS = {"gateway": GatewaySettings, "blobstore": BlobStoreSettings, "metadata": MetadataSettings,
            "auth": AuthSettings}
HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.22.0"


def helm() -> str:
    return require_tool("helm", f"go install {HELM_MODULE}")


def render(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run([helm(), "template", "wharf", str(CHART), *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=["default", "production"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render() if request.param == "default" else render("-f", str(PRODUCTION))


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_helm_lint_passes_with_both_values_files() -> None:
    for args in ([], ["-f", str(PRODUCTION)]):
        result = subprocess.run([helm(), "lint", str(CHART), "--strict", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(objects: list[dict[str, Any]], version: str) -> None:
    errors = schema_errors(objects, version)
    assert not errors, "\n".join(errors)


def test_each_service_gets_only_its_own_settings_and_they_load(objects: list[dict[str, Any]]) -> None:
    maps = of_kind(objects, "ConfigMap")
    for component, cls in SETTINGS.items():
        data = maps[f"wharf-{component}"]["data"]
        assert set(data) <= set(variables(cls)), set(data) - set(variables(cls))
        deployment = of_kind(objects, "Deployment")[f"wharf-{component}"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        from_secrets = {e["name"] for e in container.get("env", [])}
        assert from_secrets <= set(variables(cls))
        load(cls, {**data, **{name: "redis://r:6379/0" if "REDIS" in name else "x" for name in from_secrets}})


def test_pods_run_unprivileged_with_limits_and_health_probes(objects: list[dict[str, Any]]) -> None:
    for name, deployment in of_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["readOnlyRootFilesystem"], name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        [container] = pod["containers"]
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container), name


def test_values_choose_replicas_secrets_and_the_ingress() -> None:
    default, production = render(), render("-f", str(PRODUCTION))
    # Without shared signing keys the auth service runs alone (its own key); with them, as asked.
    assert of_kind(default, "Deployment")["wharf-auth"]["spec"]["replicas"] == 1
    assert of_kind(production, "Deployment")["wharf-auth"]["spec"]["replicas"] == 3
    # Secrets the chart generates only when none is named.
    assert set(of_kind(default, "Secret")) == {"wharf-internal", "wharf-admin", "wharf-redis"}
    assert set(of_kind(production, "Secret")) == set()
    assert "Ingress" not in {o["kind"] for o in default}
    [ingress] = of_kind(production, "Ingress").values()
    assert ingress["spec"]["tls"][0]["secretName"] == "registry-example-com-tls"
    gateway = of_kind(production, "ConfigMap")["wharf-gateway"]["data"]
    assert gateway["WHARF_PUBLIC_URL"] == "https://registry.example.com"
    assert gateway["WHARF_MAX_REQUESTS_IN_FLIGHT"] == "4000"
    # Autoscaled services leave the replica count to their HorizontalPodAutoscaler.
    assert "replicas" not in of_kind(production, "Deployment")["wharf-gateway"]["spec"]
    assert of_kind(production, "HorizontalPodAutoscaler")["wharf-gateway"]["spec"]["minReplicas"] == 3
    no_auth = render("--set", "auth.enabled=false")
    assert "wharf-auth" not in of_kind(no_auth, "Deployment")
    assert of_kind(no_auth, "ConfigMap")["wharf-gateway"]["data"]["WHARF_AUTH"] == "none"
