"""Mirroring in deploy/: compose (compose.mirror.yaml), kustomize (components/mirror) and Helm
(values: mirrors) give the gateway, the blob store, the auth service and the garbage collector
(wharf-gc) the upstreams file, the blob store alone its password files (least privilege: the
gateway, auth and wharf-gc never talk to an upstream), and let the blob store, and only it,
connect out to the upstreams. Auth reads the file because in token mode it decides who may pull
mirrored repositories: any signed-in account under a mirrored prefix, anonymous callers only
where the upstream says ``anonymous: true``; wharf-gc for each upstream's ``size_limit``, past
which it evicts the mirror's least recently pulled content (services/gc/eviction.py).

The example upstreams (deploy/mirrors.example.yaml, its copies for kustomize and Helm) load with
the services' own loader, the way each container sees them and as each service loads them
(tests/deploy/mirrorfiles.py; each service's own call is checked against SECRETS): the gateway,
auth and wharf-gc with ``load(environ, secrets=False)``, the blob store with ``load(environ)``,
so a password file the blob store needs but does not mount fails here as it would at start-up.
The overlays and the chart with mirroring on also pass every general check of test_kubernetes.py
and test_helm_chart.py (schemas, settings, hardening, isolation).
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
from services.mirror import config as mirror_config
from tests.deploy import test_helm_chart as chart
from tests.deploy.deployfiles import (
    DEPLOY,
    K8S,
    MIRROR_COMPONENT,
    OVERLAYS,
    SETTINGS,
    compose_model,
    config_loads,
    declared,
    environment,
    gc_variables,
    load_gc,
    pod_template,
    render,
)
from tests.deploy.mirrorfiles import (
    CREDENTIALS_DIR,
    CREDENTIALS_SECRET,
    EXAMPLE,
    MIRRORS_FILE,
    credential_keys,
    load_as_mounted,
    pod_files,
)
from tests.deploy.networkpolicy import Endpoint, reachable
from tests.deploy.test_compose import SCHEMA
from tests.support.tools import require_tool

OVERRIDE = DEPLOY / "compose.mirror.yaml"
READERS = ("gateway", "blobstore", "auth", "gc")  # the programs that read WHARF_MIRRORS_FILE
# Whether each reads the password files too: only the blob store, which logs in to the upstreams.
# The gateway (services/api/__main__.py) routes by prefix, auth (services/auth/__main__.py)
# decides who may pull a mirrored prefix and wharf-gc (services/gc/__main__.py) reads each
# upstream's size_limit, for eviction: all three load(os.environ, secrets=False). Only the blob
# store mounts them (test_each_service_loads_the_upstreams_as_these_checks_assume).
SECRETS = {"gateway": False, "blobstore": True, "auth": False, "gc": False}
OTHERS = ("metadata",)  # neither the upstreams file nor the password files
PREFIXES = ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
INTERNET = Endpoint("internet", "", ip="93.184.216.34")
PRIVATE = Endpoint("private", "", ip="192.168.7.7")


def example_keys() -> set[str]:
    return credential_keys(EXAMPLE.read_text())


def check_loads_as_mounted(service: str, files: dict[str, str], environ: dict[str, str],
                           root: pathlib.Path) -> None:
    """The example loads from what ``service`` mounts, as ``service`` loads it: the blob store with
    its password files, the gateway, auth and wharf-gc without, having none mounted (so they could
    not load the file the blob store's way)."""
    mirrors = load_as_mounted(files, environ, root / "as-loaded", secrets=SECRETS[service])
    assert [u.prefix for u in mirrors.upstreams] == PREFIXES
    if SECRETS[service]:
        assert {u.prefix for u in mirrors.upstreams if u.password} == {"docker.io", "ghcr.io"}
        return
    assert not [path for path in files if path.startswith(CREDENTIALS_DIR + "/")], f"{service} mounts credentials"
    assert not any(u.password for u in mirrors.upstreams)
    with pytest.raises(mirror_config.MirrorsError, match="docker-hub"):
        load_as_mounted(files, environ, root / "with-secrets")


def test_the_example_upstreams_load_with_their_password_files(tmp_path: pathlib.Path) -> None:
    files = {MIRRORS_FILE: EXAMPLE.read_text(),
             **{f"{CREDENTIALS_DIR}/{key}": f"secret {key}\n" for key in example_keys()}}
    mirrors = load_as_mounted(files, {mirror_config.OWN_FILE: MIRRORS_FILE}, tmp_path)
    assert [u.prefix for u in mirrors.upstreams] == PREFIXES
    assert {u.prefix: u.password for u in mirrors.upstreams if u.password} == \
        {"docker.io": "secret docker-hub", "ghcr.io": "secret ghcr"}
    assert all(u.url.startswith("https://") and not u.insecure for u in mirrors.upstreams)
    # Without the password files the blob store refuses to start, naming the file...
    with pytest.raises(mirror_config.MirrorsError, match="docker-hub"):
        load_as_mounted({MIRRORS_FILE: EXAMPLE.read_text()}, {mirror_config.OWN_FILE: MIRRORS_FILE},
                        tmp_path / "bare")
    # ...and the gateway, auth and wharf-gc, which do not read them, start: the same upstreams
    # (for auth the same anonymous flags, for wharf-gc the same size limits), no passwords.
    bare = load_as_mounted({MIRRORS_FILE: EXAMPLE.read_text()}, {mirror_config.OWN_FILE: MIRRORS_FILE},
                           tmp_path / "without-secrets", secrets=False)
    assert [(u.prefix, u.username, u.anonymous, u.size_limit, u.password) for u in bare.upstreams] == \
        [(u.prefix, u.username, u.anonymous, u.size_limit, None) for u in mirrors.upstreams]


@pytest.mark.parametrize("service", [*READERS, *OTHERS])
def test_each_service_loads_the_upstreams_as_these_checks_assume(service: str) -> None:
    """SECRETS is what the programs do: the blob store reads the password files, the gateway, auth
    and wharf-gc (the upstreams' size_limit, for eviction) load the file with secrets=False (so
    mounting them only the file is enough), and the metadata service does not load it at all."""
    expected = [SECRETS[service]] if service in READERS else []
    assert config_loads(f"wharf-{service}", "services.mirror") == expected, service


def test_every_deployment_ships_the_same_example() -> None:
    assert (MIRROR_COMPONENT / "mirrors.yaml").read_text() == EXAMPLE.read_text()
    helm = yaml.safe_load(chart.MIRRORS.read_text())["mirrors"]["upstreams"]
    assert helm == yaml.safe_load(EXAMPLE.read_text())["upstreams"]
    assert example_keys() == {"docker-hub", "ghcr"}
    # The documented commands create exactly those password files / Secret keys.
    for document in (DEPLOY / "README.md", K8S / "README.md", OVERRIDE, chart.MIRRORS):
        text = document.read_text()
        for key in example_keys():
            assert re.search(rf"(--from-file={key}=|mirror-credentials/{key}\b)", text), f"{document.name}: {key}"


# --- compose ---------------------------------------------------------------------------------

def override() -> dict[str, Any]:
    return dict(yaml.safe_load(OVERRIDE.read_text()))


def mirror_model() -> dict[str, Any]:
    """compose.yaml with compose.mirror.yaml, merged as compose merges them: environment by key,
    volumes by target (the override sets nothing else, which the test below checks)."""
    model = compose_model()
    for name, extra in override()["services"].items():
        service = model["services"][name]
        service["environment"] = {**environment(service), **extra.get("environment", {})}
        replaced = {v["target"] for v in extra.get("volumes", [])}
        service["volumes"] = [v for v in service.get("volumes", [])
                              if (v.split(":")[1] if isinstance(v, str) else v["target"]) not in replaced]
        service["volumes"] += extra.get("volumes", [])
    return model


def bind_mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service.get("volumes", []) if isinstance(v, dict) and v["type"] == "bind"}


def test_the_compose_override_follows_the_specification() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(override()), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    services = override()["services"]
    assert sorted(services) == sorted(READERS)
    assert all(set(s) <= {"environment", "volumes"} for s in services.values())


def check_settings(name: str, env: dict[str, str]) -> None:
    """Every variable is one the program reads, and each value parses as it would at start-up."""
    if name == "gc":  # wharf-gc: its own settings, the metadata service's and the blob store's
        assert set(env) <= gc_variables(), set(env) - gc_variables()
        load_gc(env)
        return
    program = f"wharf-{name}"
    assert set(env) <= declared(program), set(env) - declared(program)
    load(SETTINGS[program], env)


def test_compose_mounts_the_upstreams_into_the_readers_the_credentials_into_the_blob_store_alone() -> None:
    model = mirror_model()
    for name in READERS:
        service = model["services"][name]
        env = environment(service)
        assert env[mirror_config.OWN_FILE] == MIRRORS_FILE, name
        check_settings(name, env)
        mounts = bind_mounts(service)
        assert mounts[MIRRORS_FILE]["source"] == "./mirrors.yaml"
        if SECRETS[name]:
            assert mounts[CREDENTIALS_DIR]["source"] == "./mirror-credentials"
        else:
            assert CREDENTIALS_DIR not in mounts, f"{name} mounts the credentials"
        for mount in (mounts[MIRRORS_FILE], mounts.get(CREDENTIALS_DIR)):
            # Read-only, and a missing source stops compose rather than mounting an empty directory.
            assert mount is None or (mount["read_only"] is True and mount["bind"]["create_host_path"] is False), mount
    for name in OTHERS:
        service = model["services"][name]
        assert mirror_config.OWN_FILE not in environment(service), name
        assert MIRRORS_FILE not in bind_mounts(service), name
    # The password files reach the blob store and no other service, under any target.
    holders = {name for name, service in model["services"].items()
               for mount in bind_mounts(service).values() if mount["source"].startswith("./mirror-credentials")}
    assert holders == {"blobstore"}
    # The local files stay out of git (the example is committed).
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    assert "/mirrors.yaml" in ignored and "/mirror-credentials/" in ignored


@pytest.mark.parametrize("service", READERS)
def test_compose_containers_load_the_example_as_mounted(service: str, tmp_path: pathlib.Path) -> None:
    """deploy/ prepared as compose.mirror.yaml says: mirrors.yaml copied from the example, one
    password file per key in mirror-credentials/."""
    prepared = {"./mirrors.yaml": EXAMPLE.read_text(),
                **{f"./mirror-credentials/{key}": "placeholder" for key in example_keys()}}
    definition = mirror_model()["services"][service]
    files = {}
    for target, mount in bind_mounts(definition).items():
        for host, text in prepared.items():
            if host == mount["source"] or host.startswith(mount["source"] + "/"):
                files[target + host.removeprefix(mount["source"])] = text
    check_loads_as_mounted(service, files, environment(definition), tmp_path)


# --- kustomize -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kustomize() -> str:
    return require_tool("kustomize", "go install sigs.k8s.io/kustomize/kustomize/v5")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlays(request: pytest.FixtureRequest, kustomize: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the overlay, the overlay with the mirror component)."""
    return render(kustomize, request.param), render(kustomize, f"{request.param}+mirror")


def workloads(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Component -> (its pod spec, its container)."""
    found = {}
    for o in objects:
        template = pod_template(o)
        if template is not None and (component := template["metadata"]["labels"].get("app.kubernetes.io/component")):
            [container] = template["spec"]["containers"]
            found[component] = (template["spec"], container)
    return found


def volume_source(volume: dict[str, Any]) -> str | None:
    """The ConfigMap or Secret a volume holds (None for any other volume)."""
    if "configMap" in volume:
        return str(volume["configMap"]["name"])
    return str(volume["secret"]["secretName"]) if "secret" in volume else None


def check_mounts(objects: list[dict[str, Any]], config_map: str, secret: str) -> None:
    """The gateway, the blob store, auth and wharf-gc: WHARF_MIRRORS_FILE and the ConfigMap
    read-only; the blob store alone the credentials Secret, read-only (the gateway, auth and
    wharf-gc have neither mount nor volume of it); metadata neither."""
    pods = workloads(objects)
    assert set(READERS) | set(OTHERS) <= set(pods), sorted(pods)
    for component, (pod, container) in pods.items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        # (a StatefulSet's claim templates are no pod volumes: None)
        mounted = {volume_source(volumes.get(m["name"], {})): m for m in container.get("volumeMounts", [])}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if component not in READERS:
            assert mirror_config.OWN_FILE not in env and not {config_map, secret} & set(mounted), component
            continue
        assert env[mirror_config.OWN_FILE] == MIRRORS_FILE, component
        assert mounted[config_map]["mountPath"] == MIRRORS_FILE.rsplit("/", 1)[0] and mounted[config_map]["readOnly"]
        if not SECRETS[component]:
            assert secret not in mounted, f"{component} mounts the credentials"
            assert secret not in {volume_source(v) for v in volumes.values()}, f"{component} has the credentials"
            assert CREDENTIALS_DIR not in {m["mountPath"] for m in container.get("volumeMounts", [])}, component
            continue
        assert mounted[secret]["mountPath"] == CREDENTIALS_DIR and mounted[secret]["readOnly"], component
        [credentials] = [v["secret"] for v in volumes.values() if volume_source(v) == secret]
        assert credentials["defaultMode"] == 0o440, "readable by the pod's group only"


def test_the_component_mounts_the_upstreams_into_the_readers_the_credentials_into_the_blob_store_alone(
        overlays: Any) -> None:
    plain, mirrored = overlays
    [config_map] = [o["metadata"]["name"] for o in mirrored if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("wharf-mirrors-")]
    check_mounts(mirrored, config_map, CREDENTIALS_SECRET)
    for _, container in workloads(plain).values():
        assert mirror_config.OWN_FILE not in {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize("component", READERS)
def test_kustomize_containers_load_the_example_as_mounted(overlays: Any, component: str,
                                                          tmp_path: pathlib.Path) -> None:
    _, mirrored = overlays
    pod, container = workloads(mirrored)[component]
    files = pod_files(mirrored, pod, container, {CREDENTIALS_SECRET: example_keys()})
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    check_loads_as_mounted(component, files, env, tmp_path)


def endpoints(objects: list[dict[str, Any]], namespace: str) -> dict[str, Endpoint]:
    """Component -> its pods, as the NetworkPolicy evaluator sees them."""
    found = {}
    for o in objects:
        template = pod_template(o)
        if template is not None and (component := template["metadata"]["labels"].get("app.kubernetes.io/component")):
            found[component] = Endpoint(o["metadata"]["name"], namespace, template["metadata"]["labels"])
    return found


def policies_of(objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    return [{**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in objects
            if o["kind"] == "NetworkPolicy"]


def check_upstream_egress(plain: list[dict[str, Any]], mirrored: list[dict[str, Any]], ports: list[int]) -> None:
    """With mirroring, the blob store reaches an address on the internet on ``ports``, without it
    not on ports it has no other reason to; nothing else reaches the upstreams, nor private ranges."""
    for objects, on in ((plain, False), (mirrored, True)):
        policies, pods = policies_of(objects, "wharf"), endpoints(objects, "wharf")
        blobstore = pods["blobstore"]
        for port in ports:
            assert reachable(policies, blobstore, INTERNET, port) == on, f"blobstore -> internet:{port}, mirrors {on}"
            assert not reachable(policies, blobstore, PRIVATE, port), f"blobstore -> private:{port}"
            for component in (*(c for c in READERS if c != "blobstore"), *OTHERS):
                assert not reachable(policies, pods[component], INTERNET, port), f"{component} -> internet:{port}"


def test_only_the_blob_store_reaches_the_upstreams(overlays: Any) -> None:
    plain, mirrored = overlays
    # Production's blob store already reaches S3 on 443 anywhere outside the private ranges.
    production = any(o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "wharf-s3-clients"
                     and "ipBlock" in o["spec"]["egress"][0]["to"][0] for o in plain)
    check_upstream_egress(plain, mirrored, [80] if production else [443, 80])


# --- Helm ------------------------------------------------------------------------------------

def test_the_chart_mounts_the_upstreams_into_the_readers_the_credentials_into_the_blob_store_alone(
        tmp_path: pathlib.Path) -> None:
    objects = chart.render("-f", str(chart.MIRRORS))
    [mirrors_map] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "wharf-mirrors"]
    assert yaml.safe_load(mirrors_map["data"]["mirrors.yaml"]) == yaml.safe_load(EXAMPLE.read_text())
    check_mounts(objects, "wharf-mirrors", CREDENTIALS_SECRET)
    assert CREDENTIALS_SECRET not in chart.of_kind(objects, "Secret"), "existingSecret: made outside the chart"
    for component in READERS:
        pod, container = workloads(objects)[component]
        files = pod_files(objects, pod, container, {CREDENTIALS_SECRET: example_keys()})
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        check_loads_as_mounted(component, files, env, tmp_path / component)
    # Off (the default): nothing of it.
    default = chart.render()
    assert "wharf-mirrors" not in chart.of_kind(default, "ConfigMap")
    for _, container in workloads(default).values():
        assert mirror_config.OWN_FILE not in {e["name"] for e in container.get("env", [])}


def test_the_chart_makes_the_credentials_secret_from_inline_passwords(tmp_path: pathlib.Path) -> None:
    upstreams = [{"prefix": "ghcr.io", "url": "https://ghcr.io", "username": "me",
                  "password_file": f"{CREDENTIALS_DIR}/ghcr"}]
    objects = chart.render("--set", "mirrors.enabled=true", "--set-json", f"mirrors.upstreams={json.dumps(upstreams)}",
                           "--set-json", 'mirrors.credentials.passwords={"ghcr": "s3cret"}')
    secret = chart.of_kind(objects, "Secret")[CREDENTIALS_SECRET]
    assert secret["stringData"] == {"ghcr": "s3cret"}
    check_mounts(objects, "wharf-mirrors", CREDENTIALS_SECRET)
    pod, container = workloads(objects)["blobstore"]
    files = pod_files(objects, pod, container, {})
    [upstream] = load_as_mounted(files, {mirror_config.OWN_FILE: MIRRORS_FILE}, tmp_path).upstreams
    assert upstream.password == "placeholder ghcr"
    # A password change rolls the pods that read it: the blob store's, not the gateway's or auth's
    # (wharf-gc's are a CronJob's: each run's pod is new).
    annotations = {template["metadata"]["labels"]["app.kubernetes.io/component"]:
                   template["metadata"].get("annotations", {})
                   for o in objects if (template := pod_template(o)) is not None}
    for component in READERS:
        assert ("checksum/mirror-credentials" in annotations[component]) == SECRETS[component], component
    # Anonymous upstreams only: no Secret, no credentials volume.
    anonymous = chart.render("--set", "mirrors.enabled=true", "--set-json",
                             'mirrors.upstreams=[{"prefix": "quay.io", "url": "https://quay.io"}]')
    assert CREDENTIALS_SECRET not in chart.of_kind(anonymous, "Secret")
    for pod, _ in workloads(anonymous).values():
        assert "mirror-credentials" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "mirrors.enabled=true"], "needs at least one entry in mirrors.upstreams"),
    (["-f", str(chart.MIRRORS), "--set", "mirrors.credentials.existingSecret="],
     "upstreams[0].password_file needs mirrors.credentials"),
    (["-f", str(chart.MIRRORS), "--set", "mirrors.credentials.passwords.ghcr=x"], "not both"),
    (["-f", str(chart.MIRRORS), "--set", "mirrors.credentials.existingSecret=", "--set",
      "mirrors.credentials.passwords.ghcr=x"], "passwords has no key docker-hub"),
    (["--set", "mirrors.enabled=true", "--set-json",
      'mirrors.upstreams=[{"prefix": "a", "url": "https://a.example", "username": "u", "password_file": "/run/a"}]',
      "--set", "mirrors.credentials.existingSecret=s"], "must be a key of the credentials Secret"),
    (["--set", "mirrors.enabled=true", "--set-json",
      'mirrors.upstreams=[{"prefix": "a", "url": "https://a.example", "size_limit": 1073741824}]'],
     "size_limit must be text"),
])
def test_the_chart_refuses_mirrors_the_services_could_not_start_with(values: list[str], message: str) -> None:
    refused = chart.template(*values)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr


def test_the_chart_lets_only_the_blob_store_reach_the_upstreams_on_their_ports() -> None:
    # S3 narrowed to a private range, so that egress on 443 is the mirrors' alone.
    narrowed = ["--set", "networkPolicies.s3CIDRs={10.30.0.0/16}"]
    plain, mirrored = chart.render(*narrowed), chart.render(*narrowed, "-f", str(chart.MIRRORS))
    check_upstream_egress(plain, mirrored, [443])
    # No plain-http upstream in the example: no port 80.
    blobstore = endpoints(mirrored, "wharf")["blobstore"]
    assert not reachable(policies_of(mirrored, "wharf"), blobstore, INTERNET, 80)
    # An insecure upstream on its own port, in a private range listed as extra.
    insecure = [{"prefix": "lab", "url": "http://registry.lab.example:5000", "insecure": True}]
    lab = chart.render(*narrowed, "--set", "mirrors.enabled=true", "--set-json",
                       f"mirrors.upstreams={json.dumps(insecure)}", "--set",
                       "mirrors.egress.extraCIDRs={192.168.7.0/24}")
    policies, pods = policies_of(lab, "wharf"), endpoints(lab, "wharf")
    assert reachable(policies, pods["blobstore"], PRIVATE, 5000)
    assert not reachable(policies, pods["blobstore"], PRIVATE, 443)
    assert not reachable(policies, pods["gateway"], PRIVATE, 5000)
