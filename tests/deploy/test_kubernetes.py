"""deploy/k8s: every overlay renders with kustomize and validates, offline, against the schemas
of pinned Kubernetes versions (PyPI kubernetes-validate ships them); the rendered objects
say what the code needs (settings, ports, probes) and what the issue asks (non-root pods,
limits, autoscaling, disruption budgets, network isolation, Ingress for large uploads).
"""

from __future__ import annotations

import copy
import ipaddress
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from services.common.settings import load, variables
from tests.deploy.deployfiles import KUBERNETES_VERSIONS, OVERLAYS, SETTINGS, listen_ports, render, schema_errors
from tests.support.tools import require_tool

# The oldest Kubernetes the manifests support, and the newest schemas kubernetes-validate has.
SERVICES = ("gateway", "blobstore", "metadata", "auth")
WORKLOADS = ("Deployment", "StatefulSet")
# Secrets created outside kustomize (deploy/k8s/README.md, "Secrets"), key names included.
SECRETS = {"wharf-redis": {"url"}, "wharf-s3": {"access-key", "secret-key"}, "wharf-admin": {"password"},
           "wharf-auth-keys": set()}


@pytest.fixture(scope="module")
def kustomize() -> str:
    return require_tool("kustomize", "go install sigs.k8s.io/kustomize/kustomize/v5")


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest, kustomize: str) -> list[dict[str, Any]]:
    return render(kustomize, request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def wharf_deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return of_kind(objects, "Deployment")[f"wharf-{component}"]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in WORKLOADS:
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets: its ConfigMaps, then its env (Secret values as placeholders)."""
    config_maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "secret:" + item.get("valueFrom", {}).get("secretKeyRef", {})["key"])
    return env


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(objects: list[dict[str, Any]], version: str) -> None:
    errors = schema_errors(objects, version)
    assert not errors, "\n".join(errors)


def test_the_validator_rejects_a_mistake(objects: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(wharf_deployment(objects, "gateway"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 5000}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("component", SERVICES)
def test_containers_set_only_their_own_settings(objects: list[dict[str, Any]], component: str) -> None:
    [container] = wharf_deployment(objects, component)["spec"]["template"]["spec"]["containers"]
    [program] = container["command"]
    settings = SETTINGS[program]
    env = container_env(objects, container)
    unknown = sorted(set(env) - set(variables(settings)))
    assert not unknown, f"wharf-{component} sets variables {settings.__name__} does not read: {unknown}"
    loaded = load(settings, {k: ("redis://placeholder:6379/0" if v == "secret:url" else v) for k, v in env.items()})
    if program == "wharf-blobstore":
        assert loaded.storage == "s3" and loaded.s3_endpoint, "the blob store needs an S3 endpoint"
    generated = of_kind(objects, "Secret")
    for item in container.get("env", []):
        ref = item["valueFrom"]["secretKeyRef"]
        name = next((n for n in generated if ref["name"] == n), ref["name"])
        base = name if name in SECRETS else name.rsplit("-", 1)[0]
        assert ref["key"] in SECRETS[base], f"{component}: Secret {ref['name']} has no documented key {ref['key']}"


@pytest.mark.parametrize("component", SERVICES)
def test_probes_ask_the_services_health(objects: list[dict[str, Any]], component: str) -> None:
    [container] = wharf_deployment(objects, component)["spec"]["template"]["spec"]["containers"]
    ports = listen_ports(container_env(objects, container))
    assert sorted(p["containerPort"] for p in container["ports"]) == sorted(ports)
    # The service's own port; the metrics port is tests/deploy/test_observability.py's.
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] != "metrics"]
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    if component == "gateway":
        # /v2/ answers 401 in token mode, which httpGet counts as failure (see gateway.yaml).
        assert probes["readinessProbe"]["exec"]["command"] == ["wharf-healthcheck", f"http://127.0.0.1:{port}"]
        assert probes["livenessProbe"]["tcpSocket"]["port"] == "http"
    else:
        assert all(probe["grpc"]["port"] == port for probe in probes.values()), probes


def test_pods_run_unprivileged_with_limits(objects: list[dict[str, Any]]) -> None:
    for name, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: {image}"


def test_grpc_services_are_headless_and_the_gateway_balances_over_them(objects: list[dict[str, Any]]) -> None:
    services = of_kind(objects, "Service")
    [gateway] = wharf_deployment(objects, "gateway")["spec"]["template"]["spec"]["containers"]
    env = container_env(objects, gateway)
    for component, key in (("blobstore", "WHARF_BLOBSTORE_ADDR"), ("metadata", "WHARF_METADATA_ADDR"),
                           ("auth", "WHARF_AUTH_ADDR")):
        service = services[f"wharf-{component}"]
        assert service["spec"]["clusterIP"] == "None", f"wharf-{component} must be headless"
        [port] = service["spec"]["ports"]
        assert env[key] == f"dns:///wharf-{component}:{port['port']}"
    for service in services.values():
        selector = service["spec"]["selector"]
        matching = [o for o in objects if o["kind"] in WORKLOADS
                    and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matching) == 1, f"Service {service['metadata']['name']} selects {len(matching)} workloads"


def test_autoscalers_and_disruption_budgets(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    assert sorted(h["spec"]["scaleTargetRef"]["name"] for h in autoscalers.values()) == \
        ["wharf-blobstore", "wharf-gateway"]
    for hpa in autoscalers.values():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert "replicas" not in deployments[target]["spec"], f"{target}: the HPA owns the replica count"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"], target
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{name} has {len(covering)} PodDisruptionBudgets"
        strategy = deployment["spec"]["strategy"]
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, f"{name} must roll without losing capacity"


def test_ingress_lets_large_blobs_through(objects: list[dict[str, Any]]) -> None:
    [ingress] = of_kind(objects, "Ingress").values()
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "wharf-gateway", "port": {"name": "http"}}


def test_overlays_differ_in_where_redis_and_s3_live(kustomize: str) -> None:
    dev, production = render(kustomize, "dev"), render(kustomize, "production")
    claims = {name: [t["metadata"]["name"] for t in s["spec"]["volumeClaimTemplates"]]
              for name, s in of_kind(dev, "StatefulSet").items()}
    assert claims == {"wharf-redis": ["data"], "wharf-minio": ["data"]}
    assert not of_kind(production, "StatefulSet") and not of_kind(production, "Secret")
    [blobstore] = wharf_deployment(production, "blobstore")["spec"]["template"]["spec"]["containers"]
    assert container_env(production, blobstore)["WHARF_S3_SECURE"] == "true"
    for hpa in of_kind(production, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["maxReplicas"] >= 20
    for name in ("wharf-metadata", "wharf-auth"):
        assert of_kind(production, "Deployment")[name]["spec"]["replicas"] >= 3


# --- NetworkPolicy: who may talk to whom ------------------------------------------------------

def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    assert set(selector) <= {"matchLabels", "matchExpressions"}, f"unexpected selector {selector}"
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {"In": present and labels.get(key) in values, "NotIn": labels.get(key) not in values,
                "Exists": present, "DoesNotExist": not present}[operator]:
            return False
    return True


class Endpoint:
    def __init__(self, name: str, namespace: str, labels: dict[str, str] | None = None, ip: str = "") -> None:
        self.name, self.namespace, self.labels, self.ip = name, namespace, labels or {}, ip


def _peer_matches(peer: dict[str, Any], other: Endpoint, namespace: str) -> bool:
    if "ipBlock" in peer:
        if not other.ip:
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", []))
    if other.ip:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif other.namespace != namespace:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], other.labels)


def _allowed(policies: list[dict[str, Any]], pod: Endpoint, other: Endpoint, port: int, direction: str) -> bool:
    """Whether the policies let ``pod`` send (Egress) to or receive (Ingress) from ``other`` on ``port``."""
    relevant = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                and direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod.labels)]
    if not relevant:
        return True
    field, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in relevant:
        for rule in policy["spec"].get(field, []):
            if any(_peer_matches(peer, other, pod.namespace) for peer in rule.get(peers, [{}])) and (
                    "ports" not in rule or any(p["port"] == port for p in rule["ports"])):
                return True
    return False


def reachable(policies: list[dict[str, Any]], source: Endpoint, target: Endpoint, port: int) -> bool:
    egress = _allowed(policies, source, target, port, "Egress") if not source.ip else True
    ingress = _allowed(policies, target, source, port, "Ingress") if not target.ip else True
    return egress and ingress


def test_network_policies_isolate_the_services(objects: list[dict[str, Any]]) -> None:
    check_isolation(objects, list(of_kind(objects, "NetworkPolicy").values()))


def test_the_isolation_check_notices_a_missing_policy(objects: list[dict[str, Any]]) -> None:
    for missing in ("wharf-gateway", "wharf-blobstore", "wharf-redis-clients", "wharf-s3-clients"):
        policies = [p for p in of_kind(objects, "NetworkPolicy").values() if p["metadata"]["name"] != missing]
        with pytest.raises(AssertionError):
            check_isolation(objects, policies)


def check_isolation(objects: list[dict[str, Any]], policies: list[dict[str, Any]]) -> None:
    namespace = policies[0]["metadata"]["namespace"]
    pods = {name.removeprefix("wharf-"): Endpoint(name, namespace, o["spec"]["template"]["metadata"]["labels"])
            for name, o in {**of_kind(objects, "Deployment"), **of_kind(objects, "StatefulSet")}.items()}
    in_cluster = "redis" in pods
    redis = (pods["redis"], 6379) if in_cluster else (Endpoint("redis", "", ip="10.20.0.5"), 6379)
    s3 = (pods["minio"], 9000) if in_cluster else (Endpoint("s3", "", ip="52.216.0.1"), 443)
    controller = Endpoint("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    dns = Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
    ports = {"blobstore": 50051, "metadata": 50052, "auth": 50053}

    assert reachable(policies, controller, pods["gateway"], 5000)
    for service, port in ports.items():
        assert not reachable(policies, controller, pods[service], port), f"the Ingress controller reaches {service}"
        for source in pods:
            expected = source == "gateway"
            assert reachable(policies, pods[source], pods[service], port) == expected, f"{source} -> {service}"
    for source, endpoint in pods.items():
        assert reachable(policies, endpoint, dns, 53), f"{source} cannot resolve names"
        assert reachable(policies, endpoint, *redis) == (source in {"metadata", "auth"}), f"{source} -> Redis"
        assert reachable(policies, endpoint, *s3) == (source == "blobstore"), f"{source} -> S3"
        assert not reachable(policies, endpoint, Endpoint("internet", "", ip="93.184.216.34"), 80), source


def test_auth_pods_start_only_with_the_shared_signing_keys(objects: list[dict[str, Any]],
                                                          tmp_path: pathlib.Path) -> None:
    """The init container copies the Secret's keys, and fails when there is none: replicas that
    generated keys of their own would reject each other's tokens."""
    pod = wharf_deployment(objects, "auth")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    shell, flags, script = init["command"]
    for mount in init["volumeMounts"]:
        script = script.replace(mount["mountPath"], str(tmp_path / mount["name"]))
    (tmp_path / "signing-keys").mkdir()
    (tmp_path / "state").mkdir()
    assert subprocess.run([shell, flags, script], capture_output=True).returncode != 0
    (tmp_path / "signing-keys" / "key-1700000000.pem").write_text("PEM")
    assert subprocess.run([shell, flags, script], capture_output=True).returncode == 0
    assert (tmp_path / "state" / "keys" / "key-1700000000.pem").read_text() == "PEM"
    [auth] = pod["containers"]
    state = next(m["mountPath"] for m in auth["volumeMounts"] if m["name"] == "state")
    assert container_env(objects, auth)["WHARF_AUTH_KEYS_DIR"] == f"{state}/keys"
