"""deploy/helm/wharf: `helm lint`, and `helm template` with the default, the production, the
mirroring, the events and the policy values (tests/deploy/test_mirroring.py, tests/deploy/test_events.py
and tests/deploy/test_policy.py have their own checks),
every object valid against the Kubernetes schemas, every container given only settings its
service declares, pods unprivileged with limits, the choices the values make, and the garbage
collection CronJob with the network paths it needs and no others."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from services.api.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.blobstore.settings import BlobStoreSettings
from services.common.settings import load
from services.events.settings import EventsSettings
from services.metadata.settings import MetadataSettings
from tests.deploy.deployfiles import (
    KUBERNETES_VERSIONS,
    declared,
    gc_variables,
    load_gc,
    pod_template,
    program_options,
    schema_errors,
)
from tests.deploy.networkpolicy import Endpoint, reachable
from tests.support.tools import require_tool

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "wharf"
PRODUCTION = CHART / "ci" / "production-values.yaml"
MIRRORS = CHART / "ci" / "mirrors-values.yaml"
EVENTS = CHART / "ci" / "events-values.yaml"
POLICY = CHART / "ci" / "policy-values.yaml"
VALUES = {"default": [], "production": ["-f", str(PRODUCTION)], "mirrors": ["-f", str(MIRRORS)],
          "events": ["-f", str(EVENTS)], "policy": ["-f", str(POLICY)]}
SETTINGS = {"gateway": GatewaySettings, "blobstore": BlobStoreSettings, "metadata": MetadataSettings,
            "auth": AuthSettings}
# Services only some values run: each is checked like the others where they do.
OPTIONAL_SETTINGS = {"events": EventsSettings}
HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.22.0"


def helm() -> str:
    return require_tool("helm", f"go install {HELM_MODULE}")


def template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), "template", "wharf", str(CHART), *args], capture_output=True, text=True,
                          timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    result = template(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=list(VALUES))
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(*VALUES[request.param])


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_helm_lint_passes_with_every_values_file() -> None:
    production = ["-f", str(PRODUCTION)]
    for args in (*VALUES.values(), [*production, "-f", str(MIRRORS)], [*production, "-f", str(EVENTS)],
                 [*production, "-f", str(MIRRORS), "-f", str(EVENTS)], [*production, "-f", str(POLICY)]):
        result = subprocess.run([helm(), "lint", str(CHART), "--strict", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(objects: list[dict[str, Any]], version: str) -> None:
    errors = schema_errors(objects, version)
    assert not errors, "\n".join(errors)


def test_each_service_gets_only_its_own_settings_and_they_load(objects: list[dict[str, Any]]) -> None:
    maps = of_kind(objects, "ConfigMap")
    running = {c: cls for c, cls in OPTIONAL_SETTINGS.items() if f"wharf-{c}" in of_kind(objects, "Deployment")}
    for component, cls in {**SETTINGS, **running}.items():
        known = declared(f"wharf-{component}")
        data = maps[f"wharf-{component}"]["data"]
        assert set(data) <= known, set(data) - known
        deployment = of_kind(objects, "Deployment")[f"wharf-{component}"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        from_env = {e["name"]: e.get("value", "redis://r:6379/0" if "REDIS" in e["name"] else "x")
                    for e in container.get("env", [])}
        assert set(from_env) <= known, set(from_env) - known
        load(cls, {**data, **from_env})


def test_pods_run_unprivileged_with_limits_and_health_probes(objects: list[dict[str, Any]]) -> None:
    workloads = {o["metadata"]["name"]: (o["kind"], template["spec"])
                 for o in objects if (template := pod_template(o)) is not None}
    assert {kind for kind, _ in workloads.values()} == {"Deployment", "CronJob"}
    for name, (kind, pod) in workloads.items():
        assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["readOnlyRootFilesystem"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        if kind == "Deployment":  # a job serves nothing to probe
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


# --- garbage collection -----------------------------------------------------------------------

def gc_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(of_kind(objects, "CronJob")["wharf-gc"]["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's variables: its ConfigMaps in order, then its env (Secret values as placeholders)."""
    maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "redis://r:6379/0" if "REDIS" in item["name"] else "x")
    return env


def test_garbage_collection_is_a_cronjob_with_the_services_settings(objects: list[dict[str, Any]]) -> None:
    [cronjob] = of_kind(objects, "CronJob").values()
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["activeDeadlineSeconds"] < 86400 and job["template"]["spec"]["restartPolicy"] == "Never"
    pod = gc_pod(objects)
    [container] = pod["containers"]
    [metadata] = of_kind(objects, "Deployment")["wharf-metadata"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == metadata["image"] and container["command"] == ["wharf-gc"]
    assert container["args"] == ["--grace", "3600"]
    env = container_env(objects, container)
    assert set(env) <= gc_variables(), sorted(set(env) - gc_variables())
    load_gc(env)
    # The blob store's bucket, the metadata service's Redis, the services' addresses.
    blobstore = of_kind(objects, "ConfigMap")["wharf-blobstore"]["data"]
    assert {k: v for k, v in blobstore.items() if k.startswith("WHARF_S3_")}.items() <= env.items()
    redis = [e for e in [*metadata["env"], *container["env"]] if e["name"] == "WHARF_REDIS_URL"]
    assert len(redis) == 2 and redis[0] == redis[1], redis
    gateway = of_kind(objects, "ConfigMap")["wharf-gateway"]["data"]
    assert env["WHARF_BLOBSTORE_ADDR"] == gateway["WHARF_BLOBSTORE_ADDR"] == "dns:///wharf-blobstore:50051"
    assert env["WHARF_METADATA_ADDR"] == gateway["WHARF_METADATA_ADDR"] == "dns:///wharf-metadata:50052"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for key in ("WHARF_INTERNAL_TOKEN_FILE", "WHARF_S3_SECRET_KEY_FILE"):
        directory, _, name = env[key].rpartition("/")
        [volume] = [v for v in pod["volumes"] if v["name"] == mounts[directory]]
        assert name in {i["path"] for i in volume["secret"]["items"]}, (key, volume)


def test_gc_values_choose_the_schedule_and_the_options() -> None:
    values = ["--set", "gc.schedule=0 */6 * * *", "--set", "gc.grace=7200", "--set", "gc.deleteUntagged=true",
              "--set", "gc.extraArgs={--dry-run}", "--set", "gc.env.WHARF_LOG_LEVEL=debug"]
    objects = render(*values)
    [cronjob] = of_kind(objects, "CronJob").values()
    assert cronjob["spec"]["schedule"] == "0 */6 * * *"
    [container] = gc_pod(objects)["containers"]
    assert container["args"] == ["--grace", "7200", "--delete-untagged", "--dry-run"]
    assert of_kind(objects, "ConfigMap")["wharf-gc"]["data"]["WHARF_LOG_LEVEL"] == "debug"
    # Whole seconds from a values file stay an integer (YAML numbers reach templates as floats).
    big = render("--set-json", "gc.grace=2592000")
    assert gc_pod(big)["containers"][0]["args"] == ["--grace", "2592000"]
    # Options the shipped values pass are ones wharf-gc has (--delete-untagged is on its way: issue 15).
    assert {a for a in container["args"] if a.startswith("--")} - {"--delete-untagged"} <= program_options("wharf-gc")
    # A duration is refused, not passed on for wharf-gc to fail on every night.
    refused = template("--set", "gc.grace=1h")
    assert refused.returncode != 0 and "gc.grace must be a number of seconds" in refused.stderr
    off = render("--set", "gc.enabled=false")
    assert not of_kind(off, "CronJob") and "wharf-gc" not in of_kind(off, "ConfigMap")
    assert "wharf-gc" not in of_kind(off, "NetworkPolicy")
    # (the auth service sends the audit log's records to the metadata service)
    for name, callers in (("wharf-blobstore", ["gateway"]), ("wharf-metadata", ["gateway", "auth"])):
        peers = of_kind(off, "NetworkPolicy")[name]["spec"]["ingress"][0]["from"]
        assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers] == callers


def test_network_policies_let_the_collector_reach_exactly_what_it_needs(objects: list[dict[str, Any]]) -> None:
    namespace = "wharf"
    policies = [{**p, "metadata": {**p["metadata"], "namespace": namespace}}
                for p in of_kind(objects, "NetworkPolicy").values()]
    pods = {template["metadata"]["labels"]["app.kubernetes.io/component"]:
            Endpoint(o["metadata"]["name"], namespace, template["metadata"]["labels"])
            for o in objects if (template := pod_template(o)) is not None}
    gc = pods["gc"]
    redis, s3 = Endpoint("redis", "", ip="10.20.0.5"), Endpoint("s3", "", ip="52.216.0.1")
    dns = Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
    prometheus = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    controller = Endpoint("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    callers = {"blobstore": {"gateway", "gc"}, "metadata": {"gateway", "gc", "auth"}, "auth": {"gateway"}}
    for service, port in (("blobstore", 50051), ("metadata", 50052), ("auth", 50053)):
        for source, endpoint in pods.items():
            assert reachable(policies, endpoint, pods[service], port) == (source in callers[service]), \
                f"{source} -> {service}"
    for target, port in ((redis, 6379), (s3, 443), (dns, 53)):
        assert reachable(policies, gc, target, port), f"gc -> {target.name}"
    assert not reachable(policies, gc, pods["gateway"], 5000)
    assert not reachable(policies, gc, Endpoint("internet", "", ip="93.184.216.34"), 80)
    assert reachable(policies, prometheus, pods["metadata"], 9101)
    for source in [*pods.values(), controller, prometheus]:
        for port in (5000, 50051, 50052, 50053, 9100, 9101, 9102, 9103):
            assert not reachable(policies, source, gc, port), f"{source.name} -> gc:{port}"
