"""deploy/k8s: every overlay renders with kustomize and validates, offline, against the schemas
of pinned Kubernetes versions (PyPI kubernetes-validate ships them); the rendered objects
say what the code needs (settings, ports, probes) and what the issue asks (non-root pods,
limits, autoscaling, disruption budgets, network isolation, Ingress for large uploads,
garbage collection on a schedule, a Redis that refuses writes rather than evict). Each overlay
is checked with the mirror component, with the events component and with the policy component too
(tests/deploy/test_mirroring.py, tests/deploy/test_events.py and tests/deploy/test_policy.py have
their own checks).
"""

from __future__ import annotations

import copy
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from services.common.settings import load
from tests.deploy.deployfiles import (
    EVENTS_OVERLAYS,
    KUBERNETES_VERSIONS,
    MIRRORED_OVERLAYS,
    OVERLAYS,
    POLICY_OVERLAYS,
    SETTINGS,
    declared,
    gc_variables,
    listen_ports,
    load_gc,
    pod_template,
    program_options,
    render,
    schema_errors,
    size_bytes,
)
from tests.deploy.networkpolicy import Endpoint, reachable
from tests.deploy.rehearse import fill_redis
from tests.support.tools import require_tool

# The oldest Kubernetes the manifests support, and the newest schemas kubernetes-validate has.
SERVICES = ("gateway", "blobstore", "metadata", "auth")
# Secrets created outside kustomize (deploy/k8s/README.md, "Secrets"), key names included.
SECRETS = {"wharf-redis": {"url"}, "wharf-s3": {"access-key", "secret-key"}, "wharf-admin": {"password"},
           "wharf-auth-keys": set()}


@pytest.fixture(scope="module")
def kustomize() -> str:
    return require_tool("kustomize", "go install sigs.k8s.io/kustomize/kustomize/v5")


@pytest.fixture(scope="module", params=[*OVERLAYS, *MIRRORED_OVERLAYS, *EVENTS_OVERLAYS, *POLICY_OVERLAYS])
def objects(request: pytest.FixtureRequest, kustomize: str) -> list[dict[str, Any]]:
    return render(kustomize, request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def wharf_deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return of_kind(objects, "Deployment")[f"wharf-{component}"]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if (template := pod_template(o)) is not None:
            yield o["metadata"]["name"], template["spec"]


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets: its ConfigMaps, then its env (Secret values as placeholders)."""
    config_maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else "secret:" + item["valueFrom"]["secretKeyRef"]["key"]
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
    unknown = sorted(set(env) - declared(program))
    assert not unknown, f"wharf-{component} sets variables {settings.__name__} does not read: {unknown}"
    loaded = load(settings, {k: ("redis://placeholder:6379/0" if v == "secret:url" else v) for k, v in env.items()})
    if program == "wharf-blobstore":
        assert loaded.storage == "s3" and loaded.s3_endpoint, "the blob store needs an S3 endpoint"
    generated = of_kind(objects, "Secret")
    for item in container.get("env", []):
        if "value" in item:
            continue
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
        matching = [o for o in objects if (template := pod_template(o)) is not None
                    and selector.items() <= template["metadata"]["labels"].items()]
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


# --- garbage collection -----------------------------------------------------------------------

def gc_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = of_kind(objects, "CronJob")["wharf-gc"]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"]
    return dict(container)


def test_garbage_collection_runs_daily_and_one_run_at_a_time(objects: list[dict[str, Any]]) -> None:
    [cronjob] = of_kind(objects, "CronJob").values()
    spec = cronjob["spec"]
    minute, hour, *every_day = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and every_day == ["*", "*", "*"], f"not daily: {spec['schedule']}"
    assert not spec.get("suspend")
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 86400
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["activeDeadlineSeconds"] < 86400, "a stuck run must end before the next one is due"
    assert job["backoffLimit"] >= 1 and job["template"]["spec"]["restartPolicy"] == "Never"
    container = gc_container(objects)
    assert container["command"] == ["wharf-gc"]
    # The image every service runs, with the overlay's registry and tag.
    [metadata] = wharf_deployment(objects, "metadata")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == metadata["image"]
    # Only options wharf-gc has; blobs younger than an hour (wharf-gc's default) are never collected.
    options = {a for a in container["args"] if a.startswith("--")}
    assert options <= program_options("wharf-gc"), options
    assert float(container["args"][container["args"].index("--grace") + 1]) >= 3600


def test_the_garbage_collector_gets_the_settings_of_the_services_it_works_behind(
        objects: list[dict[str, Any]]) -> None:
    container = gc_container(objects)
    env = container_env(objects, container)
    unknown = sorted(set(env) - gc_variables())
    assert not unknown, f"wharf-gc gets variables it does not read: {unknown}"
    load_gc({k: ("redis://placeholder:6379/0" if v == "secret:url" else v) for k, v in env.items()})
    # The same bucket as the blob store and the same Redis as the metadata service.
    [blobstore] = wharf_deployment(objects, "blobstore")["spec"]["template"]["spec"]["containers"]
    storage = {k: v for k, v in container_env(objects, blobstore).items()
               if k == "WHARF_STORAGE" or k.startswith("WHARF_S3_")}
    assert storage["WHARF_STORAGE"] == "s3" and storage.items() <= env.items()
    [metadata] = wharf_deployment(objects, "metadata")["spec"]["template"]["spec"]["containers"]
    redis_url = [e for e in [*metadata["env"], *container["env"]] if e["name"] == "WHARF_REDIS_URL"]
    assert len(redis_url) == 2 and redis_url[0] == redis_url[1], redis_url
    for item in container["env"]:
        if "value" in item:  # a plain value (WHARF_MIRRORS_FILE, with the mirror component)
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        base = ref["name"] if ref["name"] in SECRETS else ref["name"].rsplit("-", 1)[0]
        assert ref["key"] in SECRETS[base], f"gc: Secret {ref['name']} has no documented key {ref['key']}"
    # The services it deletes through, at the addresses the gateway uses (headless Services).
    [gateway] = wharf_deployment(objects, "gateway")["spec"]["template"]["spec"]["containers"]
    for key in ("WHARF_BLOBSTORE_ADDR", "WHARF_METADATA_ADDR"):
        assert env[key] == container_env(objects, gateway)[key], key
    # Every file it reads is a key of a Secret mounted read-only where the variable says.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in of_kind(objects, "CronJob")["wharf-gc"]["spec"]["jobTemplate"]["spec"][
        "template"]["spec"]["volumes"]}
    for key in ("WHARF_INTERNAL_TOKEN_FILE", "WHARF_S3_SECRET_KEY_FILE"):
        directory, _, name = env[key].rpartition("/")
        assert directory in mounts and mounts[directory]["readOnly"], f"{key}={env[key]} is in no read-only mount"
        secret = volumes[mounts[directory]["name"]]["secret"]
        assert name in {item["path"] for item in secret["items"]}, f"{key}: no {name} in {secret}"


def test_the_dev_redis_refuses_writes_rather_than_evict(kustomize: str, tmp_path: pathlib.Path) -> None:
    [redis] = of_kind(render(kustomize, "dev"), "StatefulSet")["wharf-redis"]["spec"]["template"]["spec"][
        "containers"]
    options = dict(zip(redis["args"][::2], redis["args"][1::2], strict=True))
    assert options["--maxmemory-policy"] == "noeviction"
    # The ceiling leaves half the container's memory to the AOF rewrite's fork and the clients.
    limit = size_bytes(redis["resources"]["limits"]["memory"])
    assert 0 < size_bytes(options["--maxmemory"]) <= limit // 2, (options["--maxmemory"], limit)
    filled = fill_redis(redis["args"], tmp_path)
    assert filled.policy == "noeviction" and filled.refusal.startswith("OutOfMemoryError"), filled
    assert filled.kept == filled.written, "Redis evicted keys"


# --- NetworkPolicy: who may talk to whom ------------------------------------------------------

def test_network_policies_isolate_the_services(objects: list[dict[str, Any]]) -> None:
    check_isolation(objects, list(of_kind(objects, "NetworkPolicy").values()))


def test_the_isolation_check_notices_a_missing_or_widened_policy(objects: list[dict[str, Any]]) -> None:
    # With the mirror component, its policy too: without it the blob store cannot reach the upstreams;
    # with the events component, the delivery service's: without it, it cannot reach the webhooks.
    components = {"wharf-mirror-upstreams", "wharf-event-webhooks"} & set(of_kind(objects, "NetworkPolicy"))
    for missing in ("wharf-gateway", "wharf-blobstore", "wharf-metadata", "wharf-gc", "wharf-redis-clients",
                    "wharf-s3-clients", *components):
        policies = [p for p in of_kind(objects, "NetworkPolicy").values() if p["metadata"]["name"] != missing]
        with pytest.raises(AssertionError):
            check_isolation(objects, policies)
    # The collector allowed to go anywhere, or open to anyone: both caught.
    for field in ("egress", "ingress"):
        widened = copy.deepcopy(list(of_kind(objects, "NetworkPolicy").values()))
        next(p for p in widened if p["metadata"]["name"] == "wharf-gc")["spec"][field] = [{}]
        with pytest.raises(AssertionError):
            check_isolation(objects, widened)
    # The delivery service allowed to go anywhere, or opened to anyone: both caught.
    if "wharf-event-webhooks" in components:
        widened = copy.deepcopy(list(of_kind(objects, "NetworkPolicy").values()))
        next(p for p in widened if p["metadata"]["name"] == "wharf-event-webhooks")["spec"]["egress"] = [{}]
        with pytest.raises(AssertionError):
            check_isolation(objects, widened)
        opened = copy.deepcopy(list(of_kind(objects, "NetworkPolicy").values()))
        webhooks = next(p for p in opened if p["metadata"]["name"] == "wharf-event-webhooks")["spec"]
        webhooks["policyTypes"], webhooks["ingress"] = [*webhooks["policyTypes"], "Ingress"], [{}]
        with pytest.raises(AssertionError):
            check_isolation(objects, opened)


# Who may call whom: the gateway every gRPC service, the garbage collector the two it deletes
# through; metadata, auth, the collector and (with the events component) the event delivery
# service reach Redis; the blob store and the collector S3.
CALLERS = {"blobstore": {"gateway", "gc"}, "metadata": {"gateway", "gc", "auth"}, "auth": {"gateway"}}
REDIS_CLIENTS = {"metadata", "auth", "gc", "events"}
S3_CLIENTS = {"blobstore", "gc"}
# With the mirror component, the blob store fetches from the upstream registries (the internet).
MIRROR_CLIENTS = {"blobstore"}
# With the events component, the delivery service posts to the webhooks (the internet).
WEBHOOK_CLIENTS = {"events"}
METRICS_PORTS = {"gateway": 9100, "metadata": 9101, "blobstore": 9102, "auth": 9103}
EVENTS_PORTS = {"grpc": 50056, "metrics": 9106}


def check_isolation(objects: list[dict[str, Any]], policies: list[dict[str, Any]]) -> None:
    namespace = policies[0]["metadata"]["namespace"]
    pods = {o["metadata"]["name"].removeprefix("wharf-"): Endpoint(o["metadata"]["name"], namespace,
                                                                   template["metadata"]["labels"])
            for o in objects if (template := pod_template(o)) is not None}
    in_cluster = "redis" in pods
    redis = (pods["redis"], 6379) if in_cluster else (Endpoint("redis", "", ip="10.20.0.5"), 6379)
    s3 = (pods["minio"], 9000) if in_cluster else (Endpoint("s3", "", ip="52.216.0.1"), 443)
    controller = Endpoint("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    prometheus = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    dns = Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
    ports = {"blobstore": 50051, "metadata": 50052, "auth": 50053}
    mirroring = any(name.startswith("wharf-mirrors-") for name in of_kind(objects, "ConfigMap"))
    internet = Endpoint("internet", "", ip="93.184.216.34")
    private = Endpoint("private", "", ip="192.168.7.7")

    assert reachable(policies, controller, pods["gateway"], 5000)
    for service, port in ports.items():
        assert not reachable(policies, controller, pods[service], port), f"the Ingress controller reaches {service}"
        for source in pods:
            expected = source in CALLERS[service]
            assert reachable(policies, pods[source], pods[service], port) == expected, f"{source} -> {service}"
    for service, port in METRICS_PORTS.items():
        assert reachable(policies, prometheus, pods[service], port), f"Prometheus cannot scrape {service}"
    for source, endpoint in pods.items():
        assert reachable(policies, endpoint, dns, 53), f"{source} cannot resolve names"
        assert reachable(policies, endpoint, *redis) == (source in REDIS_CLIENTS), f"{source} -> Redis"
        # Production's S3 is an address on the internet, on 443, where the webhooks are too.
        webhook_s3 = not in_cluster and source in WEBHOOK_CLIENTS
        assert reachable(policies, endpoint, *s3) == (source in S3_CLIENTS or webhook_s3), f"{source} -> S3"
        assert reachable(policies, endpoint, internet, 80) == (
            (mirroring and source in MIRROR_CLIENTS) or source in WEBHOOK_CLIENTS), source
        assert not reachable(policies, endpoint, private, 443), f"{source} -> a private address on 443"
    # The collector serves nothing: nothing reaches it, on any port a Wharf process listens on.
    listening = (5000, *ports.values(), *METRICS_PORTS.values(), *EVENTS_PORTS.values())
    for source in [*pods.values(), controller, prometheus]:
        for port in listening:
            assert not reachable(policies, source, pods["gc"], port), f"{source.name} -> gc:{port}"
    assert not reachable(policies, pods["gc"], pods["gateway"], 5000), "gc -> gateway"
    # The event delivery service serves Prometheus its metrics and nothing else (its own ports, and
    # those of the services), and calls no service.
    if "events" in pods:
        for source in [*pods.values(), controller, prometheus]:
            for port in (5000, *ports.values(), *EVENTS_PORTS.values()):
                expected = source is prometheus and port == EVENTS_PORTS["metrics"]
                assert reachable(policies, source, pods["events"], port) == expected, f"{source.name} -> events:{port}"
        for service, port in {"gateway": 5000, **ports}.items():
            assert not reachable(policies, pods["events"], pods[service], port), f"events -> {service}"


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
