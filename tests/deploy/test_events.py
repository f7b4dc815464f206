"""Event delivery in deploy/: compose (compose.events.yaml), kustomize (components/events) and Helm
(values: events) run the delivery service (wharf-events) with the endpoints file and, in it alone,
the endpoints' secret files; give the gateway the endpoints file without the secrets (it reads the
share of pulls to record, nothing else); turn the metadata service's outbox on
(WHARF_EVENTS_OUTBOX=on, so it needs no endpoints file); and let the delivery service, and only it,
connect out to the webhooks, with nothing connecting to it but Prometheus.

The example endpoints (deploy/events.example.yaml, its copies for kustomize and Helm) load with the
services' own loader, the way each container sees them and as each program loads them
(tests/deploy/eventfiles.py; each program's own call is checked against SECRETS): the gateway with
``load(environ, secrets=False)``, the delivery service with ``load(environ)``, so a secret file the
delivery service needs but does not mount fails here as it would at start-up. The overlays and the
chart with events on also pass every general check of test_kubernetes.py and test_helm_chart.py
(schemas, settings, hardening, disruption budgets, isolation).
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.settings import load
from services.events import config as events_config
from services.events.settings import EventsSettings
from services.metadata.settings import MetadataSettings
from tests.deploy import test_helm_chart as chart
from tests.deploy.deployfiles import (
    DEPLOY,
    EVENTS_COMPONENT,
    EVENTS_FILE_VARIABLE,
    K8S,
    OVERLAYS,
    compose_model,
    config_loads,
    console_scripts,
    declared,
    environment,
    interpolated,
    listen_ports,
    mounts,
    pod_template,
    render,
)
from tests.deploy.eventfiles import (
    EVENTS_FILE,
    EXAMPLE,
    SECRETS_DIR,
    SECRETS_SECRET,
    load_as_mounted,
    secret_keys,
)
from tests.deploy.mirrorfiles import pod_files
from tests.deploy.networkpolicy import Endpoint, reachable
from tests.deploy.test_compose import SCHEMA
from tests.deploy.test_kubernetes import container_env
from tests.deploy.test_mirroring import endpoints, policies_of, volume_source, workloads
from tests.support.tools import require_tool

OVERRIDE = DEPLOY / "compose.events.yaml"
CHART_VALUES = chart.CHART / "ci" / "events-values.yaml"
READERS = ("events", "gateway")  # the programs of a deployment that read WHARF_EVENTS_FILE
# Whether each reads the secret files too: only the delivery service, which signs the bodies. The
# gateway (services/api/__main__.py) reads the share of pulls to record with load(os.environ,
# secrets=False), so mounting it the file alone is enough.
SECRETS = {"events": True, "gateway": False}
# Every other service: neither file. The metadata service gets WHARF_EVENTS_OUTBOX=on instead
# (it would read the file with secrets=False only when that is auto).
OTHERS = ("metadata", "blobstore", "auth", "gc")
# What each program's entry module passes as ``secrets`` to the endpoints' loader, as it starts.
LOADS = {"events": [True], "gateway": [False], "metadata": [False], "blobstore": [], "auth": [], "gc": []}
NAMES = ["ci", "audit"]
LISTEN_PORT, METRICS_PORT = 50056, 9106
INTERNET = Endpoint("internet", "", ip="93.184.216.34")
PRIVATE = Endpoint("private", "", ip="192.168.7.7")
PROMETHEUS = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
CONTROLLER = Endpoint("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
DNS = Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
SERVICE_PORTS = {"gateway": 5000, "blobstore": 50051, "metadata": 50052, "auth": 50053}


def example_keys() -> set[str]:
    return secret_keys(EXAMPLE.read_text())


def check_loads_as_mounted(program: str, files: dict[str, str], environ: dict[str, str],
                           root: pathlib.Path) -> None:
    """The example loads from what ``program`` mounts, as ``program`` loads it: the delivery service
    with its secret files, the gateway without, having none mounted (so it could not load the file
    the delivery service's way)."""
    events = load_as_mounted(files, environ, root / "as-loaded", secrets=SECRETS[program])
    assert [e.name for e in events.endpoints] == NAMES
    if SECRETS[program]:
        assert all(e.secret for e in events.endpoints)
        return
    assert not [path for path in files if path.startswith(SECRETS_DIR + "/")], f"{program} mounts the secrets"
    assert not any(e.secret for e in events.endpoints)
    assert events.pull_share == 0.1, "the gateway must see the share of pulls to record"
    with pytest.raises(events_config.EventsError, match="secret_file"):
        load_as_mounted(files, environ, root / "with-secrets")


def test_the_example_endpoints_load_with_their_secret_files(tmp_path: pathlib.Path) -> None:
    files = {EVENTS_FILE: EXAMPLE.read_text(), **{f"{SECRETS_DIR}/{key}": f"key {key}\n" for key in example_keys()}}
    events = load_as_mounted(files, {EVENTS_FILE_VARIABLE: EVENTS_FILE}, tmp_path)
    assert [e.name for e in events.endpoints] == NAMES and events.enabled
    assert {e.name: e.secret for e in events.endpoints} == {"ci": b"key ci", "audit": b"key audit"}
    assert all(e.url.startswith("https://") for e in events.endpoints)
    # Pulls: ci ignores them, audit takes one in ten, which is what the gateway records.
    assert events.pull_share == 0.1
    # Without the secret files the delivery service refuses to start, naming each...
    with pytest.raises(events_config.EventsError, match=r"(?s)secret_file.*secret_file"):
        load_as_mounted({EVENTS_FILE: EXAMPLE.read_text()}, {EVENTS_FILE_VARIABLE: EVENTS_FILE}, tmp_path / "bare")
    # ...and the gateway, which does not read them, starts: the same endpoints, no secrets.
    bare = load_as_mounted({EVENTS_FILE: EXAMPLE.read_text()}, {EVENTS_FILE_VARIABLE: EVENTS_FILE},
                           tmp_path / "without-secrets", secrets=False)
    assert [(e.name, e.url, e.pull_share, e.secret) for e in bare.endpoints] == \
        [(e.name, e.url, e.pull_share, b"") for e in events.endpoints]


@pytest.mark.parametrize("program", list(LOADS))
def test_each_program_loads_the_endpoints_as_these_checks_assume(program: str) -> None:
    """SECRETS is what the programs do: the delivery service reads the secret files, the gateway
    loads the file with secrets=False (so mounting it the file alone is enough), the metadata
    service likewise but only when WHARF_EVENTS_OUTBOX is auto (the deployments set it on), and
    the blob store, auth and wharf-gc do not load it at all."""
    assert config_loads(f"wharf-{program}", "services.events") == LOADS[program], program
    assert all(LOADS[p] == [SECRETS[p]] for p in READERS)


def test_every_deployment_ships_the_same_example() -> None:
    assert (EVENTS_COMPONENT / "events.yaml").read_text() == EXAMPLE.read_text()
    helm = yaml.safe_load(CHART_VALUES.read_text())["events"]["endpoints"]
    assert helm == yaml.safe_load(EXAMPLE.read_text())["endpoints"]
    assert example_keys() == {"ci", "audit"}
    # The documented commands create exactly those secret files / Secret keys.
    for document in (DEPLOY / "README.md", K8S / "README.md", OVERRIDE, CHART_VALUES):
        text = document.read_text()
        for key in example_keys():
            assert re.search(rf"(--from-file={key}=|event-secrets/{key}\b)", text), f"{document.name}: {key}"


# --- compose ---------------------------------------------------------------------------------

def override() -> dict[str, Any]:
    return dict(yaml.safe_load(OVERRIDE.read_text()))


def target(volume: str | dict[str, Any]) -> str:
    return volume.split(":")[1] if isinstance(volume, str) else str(volume["target"])


def events_model(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml with compose.events.yaml, merged as compose merges them: a new service whole,
    an existing one's environment by key and volumes by target (the override sets nothing else
    on them, which a test below checks), the top-level secrets added."""
    model = compose_model(environ)
    extra = interpolated(override(), environ or {})
    for name, definition in extra["services"].items():
        if name not in model["services"]:
            model["services"][name] = definition
            continue
        service = model["services"][name]
        service["environment"] = {**environment(service), **environment(definition)}
        replaced = {target(v) for v in definition.get("volumes", [])}
        service["volumes"] = [v for v in service.get("volumes", []) if target(v) not in replaced]
        service["volumes"] += definition.get("volumes", [])
    model["secrets"] = {**model.get("secrets", {}), **extra.get("secrets", {})}
    return model


def bind_mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service.get("volumes", []) if isinstance(v, dict) and v["type"] == "bind"}


def secret_files(model: dict[str, Any], service: dict[str, Any]) -> dict[str, str]:
    """A service's compose secrets: the path in the container -> the file of deploy/ it is."""
    return {s["target"]: model["secrets"][s["source"]]["file"] for s in service.get("secrets", [])}


def test_the_compose_override_follows_the_specification() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(override()), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    services = override()["services"]
    assert sorted(services) == ["events", "gateway", "metadata", "prometheus"]
    for name in ("gateway", "metadata", "prometheus"):  # changed, not replaced
        assert set(services[name]) <= {"environment", "volumes"}, name
    assert set(services["metadata"]) == {"environment"}
    assert set(services["prometheus"]) == {"volumes"}


def test_the_compose_delivery_service_is_hardened_checked_and_limited_like_the_others() -> None:
    model = events_model()
    events, metadata = model["services"]["events"], model["services"]["metadata"]
    # The image every Wharf image is, built the same way (never pulled), running wharf-events.
    assert events["build"] == metadata["build"] and events["image"] == metadata["image"]
    assert events["command"] == ["wharf-events"] and "wharf-events" in console_scripts()
    # compose.yaml's x-wharf-service, which the override cannot reference.
    for key in ("restart", "read_only", "tmpfs", "cap_drop", "security_opt", "stop_grace_period"):
        assert events[key] == metadata[key], key
    limits = events["deploy"]["resources"]["limits"]
    assert {"cpus", "memory"} <= set(limits)
    # Settings: only wharf-events', and they load; the health check asks its listen port.
    env = environment(events)
    assert set(env) <= declared("wharf-events"), set(env) - declared("wharf-events")
    settings = load(EventsSettings, env)
    assert settings.listen.startswith("0.0.0.0:") and settings.metrics_addr.startswith("0.0.0.0:")
    assert events["healthcheck"]["test"] == ["CMD", "wharf-healthcheck", f"127.0.0.1:{LISTEN_PORT}"]
    assert listen_ports(env) == {LISTEN_PORT, METRICS_PORT}
    # The metadata service's Redis and internal token (the same volume), after them in start order.
    assert env["WHARF_REDIS_URL"] == environment(metadata)["WHARF_REDIS_URL"]
    assert env["WHARF_INTERNAL_TOKEN_FILE"] == environment(metadata)["WHARF_INTERNAL_TOKEN_FILE"]
    [token] = [m for m in mounts(events) if env["WHARF_INTERNAL_TOKEN_FILE"].startswith(m.target + "/")]
    assert token.source == "secret-internal" and token.read_only
    assert {name: rule["condition"] for name, rule in events["depends_on"].items()} == \
        {"redis": "service_healthy", "init-secrets": "service_completed_successfully"}
    assert "ports" not in events and "container_name" not in events, "`--scale events=2` must work"
    # Variables it interpolates are documented in .env.example like compose.yaml's.
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (DEPLOY / ".env.example").read_text(), re.M))
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", OVERRIDE.read_text()))
    assert used and used <= documented, sorted(used - documented)
    assert "compose.events.yaml" in (DEPLOY / ".env.example").read_text()


def test_compose_turns_the_outbox_on_and_mounts_the_endpoints_into_the_readers_the_secrets_into_delivery_alone(
        ) -> None:
    model = events_model()
    for name in READERS:
        service = model["services"][name]
        env = environment(service)
        assert env[EVENTS_FILE_VARIABLE] == EVENTS_FILE, name
        assert set(env) <= declared(f"wharf-{name}"), name
        mount = bind_mounts(service)[EVENTS_FILE]
        # Read-only, and a missing source stops compose rather than mounting an empty directory.
        assert mount["source"] == "./events.yaml"
        assert mount["read_only"] is True and mount["bind"]["create_host_path"] is False, mount
    assert load(MetadataSettings, environment(model["services"]["metadata"])).events_outbox == "on"
    for name in OTHERS:
        service = model["services"][name]
        assert EVENTS_FILE_VARIABLE not in environment(service) and EVENTS_FILE not in bind_mounts(service), name
        assert not service.get("secrets"), name
    assert "WHARF_EVENTS_OUTBOX" not in environment(compose_model()["services"]["metadata"]), "off without it"
    # One compose secret per key, at its secret_file path, in the delivery service and no other.
    events = model["services"]["events"]
    assert secret_files(model, events) == {f"{SECRETS_DIR}/{key}": f"./event-secrets/{key}" for key in example_keys()}
    holders = {name for name, service in model["services"].items() if service.get("secrets")}
    assert holders == {"events"}
    assert not [m for s in model["services"].values() for m in mounts(s) if "event-secrets" in m.source]
    # The local files stay out of git (the example is committed).
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    assert "/events.yaml" in ignored and "/event-secrets/" in ignored


@pytest.mark.parametrize("program", READERS)
def test_compose_containers_load_the_example_as_mounted(program: str, tmp_path: pathlib.Path) -> None:
    """deploy/ prepared as compose.events.yaml says: events.yaml copied from the example, one
    secret file per key in event-secrets/."""
    prepared = {"./events.yaml": EXAMPLE.read_text(),
                **{f"./event-secrets/{key}": f"key {key}" for key in example_keys()}}
    model = events_model()
    definition = model["services"][program]
    files = {}
    for container_path, mount in bind_mounts(definition).items():
        for host, text in prepared.items():
            if host == mount["source"] or host.startswith(mount["source"] + "/"):
                files[container_path + host.removeprefix(mount["source"])] = text
    for container_path, host in secret_files(model, definition).items():
        files[container_path] = prepared[host]
    check_loads_as_mounted(program, files, environment(definition), tmp_path)


# --- kustomize -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kustomize() -> str:
    return require_tool("kustomize", "go install sigs.k8s.io/kustomize/kustomize/v5")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlays(request: pytest.FixtureRequest, kustomize: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the overlay, the overlay with the events component)."""
    return render(kustomize, request.param), render(kustomize, f"{request.param}+events")


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def check_mounts(objects: list[dict[str, Any]], config_map: str, secret: str) -> None:
    """The delivery service and the gateway: WHARF_EVENTS_FILE and the ConfigMap read-only; the
    delivery service alone the secrets, read-only, mode 0440 (the gateway has neither mount nor
    volume of them); the metadata service WHARF_EVENTS_OUTBOX=on and neither; the others nothing."""
    pods = workloads(objects)
    assert set(READERS) | set(OTHERS) <= set(pods), sorted(pods)
    for component, (pod, container) in pods.items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounted = {volume_source(volumes.get(m["name"], {})): m for m in container.get("volumeMounts", [])}
        env = plain_env(container)
        assert (env.get("WHARF_EVENTS_OUTBOX") == "on") == (component == "metadata"), component
        if component not in READERS:
            assert EVENTS_FILE_VARIABLE not in env and not {config_map, secret} & set(mounted), component
            assert not {config_map, secret} & {volume_source(v) for v in volumes.values()}, component
            continue
        assert env[EVENTS_FILE_VARIABLE] == EVENTS_FILE, component
        assert mounted[config_map]["mountPath"] == EVENTS_FILE.rsplit("/", 1)[0] and mounted[config_map]["readOnly"]
        if not SECRETS[component]:
            assert secret not in mounted, f"{component} mounts the secrets"
            assert secret not in {volume_source(v) for v in volumes.values()}, f"{component} has the secrets"
            assert SECRETS_DIR not in {m["mountPath"] for m in container.get("volumeMounts", [])}, component
            continue
        assert mounted[secret]["mountPath"] == SECRETS_DIR and mounted[secret]["readOnly"], component
        [secrets] = [v["secret"] for v in volumes.values() if volume_source(v) == secret]
        assert secrets["defaultMode"] == 0o440, "readable by the pod's group only"


def check_delivery_service(objects: list[dict[str, Any]], env: dict[str, str], replicas: int) -> None:
    """The Deployment: wharf-events from the metadata image, its settings only (they load), gRPC
    probes on its listen port, metrics on a named port, the metadata service's Redis Secret, and
    every file it reads in a read-only mount."""
    deployments = {o["metadata"]["name"].rsplit("-", 1)[-1]: o for o in objects if o["kind"] == "Deployment"}
    deployment = deployments["events"]
    assert deployment["spec"]["replicas"] == replicas
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [metadata] = deployments["metadata"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["wharf-events"] and container["image"] == metadata["image"]
    assert set(env) <= declared("wharf-events"), sorted(set(env) - declared("wharf-events"))
    settings = load(EventsSettings, {**env, "WHARF_REDIS_URL": "redis://placeholder:6379/0"})
    assert settings.listen == f"0.0.0.0:{LISTEN_PORT}" and settings.metrics_addr == f"0.0.0.0:{METRICS_PORT}"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": LISTEN_PORT,
                                                                         "metrics": METRICS_PORT}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["grpc"]["port"] == LISTEN_PORT, kind
    redis = [e["valueFrom"]["secretKeyRef"] for e in [*metadata["env"], *container["env"]]
             if e["name"] == "WHARF_REDIS_URL"]
    assert len(redis) == 2 and redis[0] == redis[1], redis
    mounts_by_path = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for key in ("WHARF_INTERNAL_TOKEN_FILE", EVENTS_FILE_VARIABLE):
        directory, _, name = env[key].rpartition("/")
        assert mounts_by_path[directory]["readOnly"], key
        volume = volumes[mounts_by_path[directory]["name"]]
        source = volume.get("secret") or volume["configMap"]
        assert name in {item["path"] for item in source["items"]}, (key, source)
    # Nothing serves its ports but the pods themselves: no Service selects it.
    for service in (o for o in objects if o["kind"] == "Service"):
        assert not service["spec"]["selector"].items() <= pod_template(deployment)["metadata"]["labels"].items()


def test_the_component_mounts_the_endpoints_into_the_readers_the_secrets_into_delivery_alone(
        overlays: Any) -> None:
    plain, with_events = overlays
    [config_map] = [o["metadata"]["name"] for o in with_events if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("wharf-event-endpoints-")]
    check_mounts(with_events, config_map, SECRETS_SECRET)
    assert "events" not in workloads(plain)
    for _, container in workloads(plain).values():
        assert not {EVENTS_FILE_VARIABLE, "WHARF_EVENTS_OUTBOX"} & {e["name"] for e in container.get("env", [])}


def test_the_component_runs_two_delivery_replicas_with_their_own_settings(overlays: Any) -> None:
    _, with_events = overlays
    [deployment] = [o for o in with_events if o["kind"] == "Deployment" and o["metadata"]["name"] == "wharf-events"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in container_env(with_events, container).items() if v != "secret:url"}
    check_delivery_service(with_events, env, replicas=2)


@pytest.mark.parametrize("program", READERS)
def test_kustomize_containers_load_the_example_as_mounted(overlays: Any, program: str,
                                                          tmp_path: pathlib.Path) -> None:
    _, with_events = overlays
    pod, container = workloads(with_events)[program]
    files = pod_files(with_events, pod, container, {SECRETS_SECRET: example_keys()})
    check_loads_as_mounted(program, files, plain_env(container), tmp_path)


def pods_of(objects: list[dict[str, Any]]) -> dict[str, Endpoint]:
    """Each Wharf component's pods, and the overlay's own Redis and MinIO (dev), as the
    NetworkPolicy evaluator sees them."""
    pods = endpoints(objects, "wharf")
    for o in objects:
        if o["kind"] == "StatefulSet":
            pods[o["metadata"]["name"].removeprefix("wharf-")] = Endpoint(
                o["metadata"]["name"], "wharf", o["spec"]["template"]["metadata"]["labels"])
    return pods


def check_delivery_paths(objects: list[dict[str, Any]], redis: tuple[Endpoint, int], ports: list[int],
                         exclusive: list[int]) -> None:
    """The delivery service reaches Redis, DNS and the internet on ``ports``, nothing private there
    and no Wharf service; nothing reaches it but Prometheus, on its metrics port; and on the
    ``exclusive`` ports no other Wharf pod reaches the internet (on 443 the blob store and wharf-gc
    may, for S3, where the overlay or the values leave S3 anywhere outside)."""
    policies, pods = policies_of(objects, "wharf"), pods_of(objects)
    events = pods["events"]
    assert reachable(policies, events, *redis), "events -> Redis"
    assert reachable(policies, events, DNS, 53), "events cannot resolve names"
    for port in ports:
        assert reachable(policies, events, INTERNET, port), f"events -> internet:{port}"
        assert not reachable(policies, events, PRIVATE, port), f"events -> private:{port}"
    for service, port in SERVICE_PORTS.items():
        assert not reachable(policies, events, pods[service], port), f"events -> {service}"
    if "minio" in pods:
        assert not reachable(policies, events, pods["minio"], 9000), "events -> MinIO"
    for component, endpoint in pods.items():
        for port in exclusive:
            if component != "events":
                assert not reachable(policies, endpoint, INTERNET, port), f"{component} -> internet:{port}"
    for source in [*pods.values(), CONTROLLER, PROMETHEUS]:
        for port in (LISTEN_PORT, METRICS_PORT, *SERVICE_PORTS.values()):
            expected = source is PROMETHEUS and port == METRICS_PORT
            assert reachable(policies, source, events, port) == expected, f"{source.name} -> events:{port}"


def test_only_the_delivery_service_reaches_the_webhooks_and_only_prometheus_reaches_it(overlays: Any) -> None:
    plain, with_events = overlays
    pods = pods_of(with_events)
    redis = (pods["redis"], 6379) if "redis" in pods else (Endpoint("redis", "", ip="10.20.0.5"), 6379)
    # Production's blob store and wharf-gc already reach S3 on 443 anywhere outside the private ranges.
    production = "redis" not in pods
    check_delivery_paths(with_events, redis, [443, 80], [80] if production else [443, 80])
    # The component adds its webhooks policy and changes no other: the overlays' Redis policies
    # and the base's metrics policy name the component already.
    before = {o["metadata"]["name"]: o for o in plain if o["kind"] == "NetworkPolicy"}
    after = {o["metadata"]["name"]: o for o in with_events if o["kind"] == "NetworkPolicy"}
    assert set(after) - set(before) == {"wharf-event-webhooks"}
    assert {name: after[name] for name in before} == before


# --- Helm ------------------------------------------------------------------------------------

def test_the_chart_mounts_the_endpoints_into_the_readers_the_secrets_into_delivery_alone(
        tmp_path: pathlib.Path) -> None:
    objects = chart.render("-f", str(CHART_VALUES))
    [endpoints_map] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] ==
                       "wharf-event-endpoints"]
    assert yaml.safe_load(endpoints_map["data"]["events.yaml"]) == yaml.safe_load(EXAMPLE.read_text())
    check_mounts(objects, "wharf-event-endpoints", SECRETS_SECRET)
    assert SECRETS_SECRET not in chart.of_kind(objects, "Secret"), "existingSecret: made outside the chart"
    for program in READERS:
        pod, container = workloads(objects)[program]
        files = pod_files(objects, pod, container, {SECRETS_SECRET: example_keys()})
        check_loads_as_mounted(program, files, plain_env(container), tmp_path / program)
    [container] = chart.of_kind(objects, "Deployment")["wharf-events"]["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in chart.container_env(objects, container).items() if k != "WHARF_REDIS_URL"}
    check_delivery_service(objects, env, replicas=2)
    # Off (the default): nothing of it.
    default = chart.render()
    assert "wharf-event-endpoints" not in chart.of_kind(default, "ConfigMap")
    assert "wharf-events" not in {**chart.of_kind(default, "Deployment"), **chart.of_kind(default, "NetworkPolicy")}
    for _, container in workloads(default).values():
        assert not {EVENTS_FILE_VARIABLE, "WHARF_EVENTS_OUTBOX"} & {e["name"] for e in container.get("env", [])}


def test_the_chart_values_choose_replicas_and_settings() -> None:
    objects = chart.render("-f", str(CHART_VALUES), "--set", "events.replicas=3", "--set",
                           "events.env.WHARF_EVENTS_LEASE=20", "--set", "publicUrl=https://registry.example.com")
    assert chart.of_kind(objects, "Deployment")["wharf-events"]["spec"]["replicas"] == 3
    settings = chart.of_kind(objects, "ConfigMap")["wharf-events"]["data"]
    loaded = load(EventsSettings, settings)
    assert loaded.lease_ttl == 20 and loaded.public_url == "https://registry.example.com"


def test_the_chart_makes_the_secrets_secret_from_inline_keys(tmp_path: pathlib.Path) -> None:
    hooks = [{"name": "ci", "url": "https://ci.example.com/hook", "secret_file": f"{SECRETS_DIR}/ci",
              "backlog": 1000000}]
    objects = chart.render("--set", "events.enabled=true", "--set-json", f"events.endpoints={json.dumps(hooks)}",
                           "--set-json", 'events.secrets={"ci": "s3cret"}')
    secret = chart.of_kind(objects, "Secret")["wharf-event-secrets"]
    assert secret["stringData"] == {"ci": "s3cret"}
    check_mounts(objects, "wharf-event-endpoints", "wharf-event-secrets")
    pod, container = workloads(objects)["events"]
    files = pod_files(objects, pod, container, {})
    [endpoint] = load_as_mounted(files, {EVENTS_FILE_VARIABLE: EVENTS_FILE}, tmp_path).endpoints
    # The key as its file holds it, and a whole number a values file makes a float stays whole.
    assert endpoint.secret == b"placeholder ci" and endpoint.backlog == 1_000_000
    # A key change rolls the delivery service, not the gateway.
    annotations = {template["metadata"]["labels"]["app.kubernetes.io/component"]:
                   template["metadata"].get("annotations", {})
                   for o in objects if (template := pod_template(o)) is not None}
    for program in READERS:
        assert ("checksum/event-secrets" in annotations[program]) == SECRETS[program], program
    # Endpoints without a secret: no Secret, no secrets volume.
    unsigned = chart.render("--set", "events.enabled=true", "--set-json",
                            'events.endpoints=[{"name": "a", "url": "https://a.example/hook"}]')
    assert "wharf-event-secrets" not in chart.of_kind(unsigned, "Secret")
    for pod, _ in workloads(unsigned).values():
        assert "event-secrets" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "events.enabled=true"], "needs at least one entry in events.endpoints"),
    (["-f", str(CHART_VALUES), "--set", "events.existingSecret="], "endpoints[0].secret_file needs events."),
    (["-f", str(CHART_VALUES), "--set", "events.secrets.ci=x"], "not both"),
    (["-f", str(CHART_VALUES), "--set", "events.existingSecret=", "--set", "events.secrets.ci=x"],
     "events.secrets has no key audit"),
    (["--set", "events.enabled=true", "--set-json",
      'events.endpoints=[{"name": "a", "url": "https://a.example", "secret_file": "/run/a"}]',
      "--set", "events.existingSecret=s"], "must be a key of the secrets Secret"),
    (["--set", "events.enabled=true", "--set-json", 'events.endpoints=[{"name": "a", "url": "https://a.example",'
      ' "secret": "x"}]'], "secret would put the key into a ConfigMap"),
    (["--set", "events.enabled=true", "--set-json", 'events.endpoints=[{"url": "https://a.example"}]'],
     "needs a name and a url"),
    (["--set", "events.enabled=true", "--set-json",
      'events.endpoints=[{"name": "a", "url": "https://a.example", "timeout": 5}]'], "timeout must be a duration"),
])
def test_the_chart_refuses_endpoints_the_services_could_not_start_with(values: list[str], message: str) -> None:
    refused = chart.template(*values)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr


def test_the_chart_lets_only_the_delivery_service_reach_the_webhooks_on_their_ports() -> None:
    # S3 narrowed to a private range, so that egress on 443 is the webhooks' alone.
    narrowed = ["--set", "networkPolicies.s3CIDRs={10.30.0.0/16}", "--set", "networkPolicies.redisCIDRs={10.20.0.0/24}"]
    objects = chart.render(*narrowed, "-f", str(CHART_VALUES))
    check_delivery_paths(objects, (Endpoint("redis", "", ip="10.20.0.5"), 6379), [443], [443])
    # No plain-http endpoint in the example: no port 80.
    events = endpoints(objects, "wharf")["events"]
    assert not reachable(policies_of(objects, "wharf"), events, INTERNET, 80)
    # A plain-http endpoint on its own port, in a private range listed as extra.
    lab = chart.render(*narrowed, "--set", "events.enabled=true", "--set-json",
                       'events.endpoints=[{"name": "lab", "url": "http://hooks.lab.example:8080/wharf"}]',
                       "--set", "events.egress.extraCIDRs={192.168.7.0/24}")
    policies, pods = policies_of(lab, "wharf"), pods_of(lab)
    assert reachable(policies, pods["events"], PRIVATE, 8080)
    assert not reachable(policies, pods["events"], PRIVATE, 443)
    assert not reachable(policies, pods["gateway"], PRIVATE, 8080)
