"""Governance rules in deploy/: compose (compose.policy.yaml), kustomize (components/policy) and Helm
(values: policy) give the metadata service, and only it, the policy file read-only and
WHARF_POLICY_FILE naming it: it is the one program that reads the file (it enforces immutable tags
and quotas, runs retention, and serves the rate limits to the gateways over gRPC), which a check of
each program's entry module confirms.

The example rules (deploy/policy.example.yaml, its copies for kustomize and Helm) load with the
service's own loader (services.common.governance.load_file, the one wharf-metadata calls at start
and wharf-stack --check runs) from the files the metadata container mounts, so a file the container
does not get, or a rule it would refuse, fails here as it would at start-up. The overlays and the
chart with a policy also pass every general check of test_kubernetes.py and test_helm_chart.py
(schemas, settings, hardening, disruption budgets, isolation).
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest
import yaml

from services.common import governance
from services.common.settings import load
from services.metadata.settings import MetadataSettings
from tests.deploy import test_helm_chart as chart
from tests.deploy.deployfiles import (
    DEPLOY,
    K8S,
    OVERLAYS,
    POLICY_COMPONENT,
    POLICY_FILE_VARIABLE,
    ROOT,
    compose_model,
    console_scripts,
    declared,
    environment,
    gc_variables,
    interpolated,
    pod_template,
    render,
)
from tests.deploy.mirrorfiles import pod_files
from tests.deploy.test_compose import SCHEMA
from tests.deploy.test_mirroring import volume_source, workloads
from tests.support.tools import require_tool

EXAMPLE = DEPLOY / "policy.example.yaml"
OVERRIDE = DEPLOY / "compose.policy.yaml"
CHART_VALUES = chart.CHART / "ci" / "policy-values.yaml"
# Where every deployment mounts the policy file.
POLICY_FILE = "/etc/wharf/policy/policy.yaml"
CONFIG_MAP = "wharf-policy"
# The programs deploy/ runs: only the metadata service reads the policy file.
PROGRAMS = ("gateway", "blobstore", "metadata", "auth", "events", "gc")
READER = "metadata"


def example_policy() -> governance.Policy:
    return governance.parse_document(yaml.safe_load(EXAMPLE.read_text()))


def load_as_mounted(files: Mapping[str, str], environ: Mapping[str, str], root: pathlib.Path) -> governance.Policy:
    """The rules the container with ``files`` (container path -> text) and ``environ`` loads at
    start, written under ``root`` (a file it does not mount is missing here too); also what
    wharf-stack --check says of them, which must be nothing."""
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    rooted = {POLICY_FILE_VARIABLE: str(root / environ[POLICY_FILE_VARIABLE].lstrip("/"))}
    assert governance.problems(rooted) == []
    return governance.load_file(rooted)


def test_the_example_parses_with_the_services_parser(tmp_path: pathlib.Path) -> None:
    policy = example_policy()
    # What the issue names: immutable release tags under prod/, a quota, retention for ci/, a rate limit.
    [immutable] = policy.immutable
    assert (immutable.repositories, immutable.tags) == ("prod/**", "v*")
    assert policy.immutable_rule("prod/team/app", "v1.2.3") == immutable
    assert policy.immutable_rule("prod/app", "latest") is None and policy.immutable_rule("ci/app", "v1") is None
    [quota] = policy.quotas
    assert policy.quota("team/app") == quota and quota.size == 10 * 1024**3
    [retention] = policy.retention
    assert policy.retention_rule("ci/build/app") == retention and policy.retention_rule("prod/app") is None
    assert retention.keep_last == 10 and retention.untagged_older_than == 7 * 86400
    [ratelimit] = policy.ratelimits
    assert policy.ratelimit("") == ratelimit and ratelimit.burst >= ratelimit.requests_per_second
    # As its own file (WHARF_POLICY_FILE) and as the policy: section of WHARF_CONFIG: the same rules.
    assert governance.load_file({POLICY_FILE_VARIABLE: str(EXAMPLE)}) == policy
    config = tmp_path / "wharf.yaml"
    config.write_text(yaml.safe_dump({"log_level": "info", "policy": yaml.safe_load(EXAMPLE.read_text())}))
    assert governance.load_file({"WHARF_CONFIG": str(config)}) == policy
    assert governance.problems({POLICY_FILE_VARIABLE: str(EXAMPLE)}) == []


def policy_loads(program: str) -> int:
    """How many times ``program``'s entry module calls the policy file's loader
    (services.common.governance.load_file)."""
    module = console_scripts()[f"wharf-{program}"].split(":")[0]
    tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text())
    modules, functions = set(), set()  # the names the loader's module, or the loader, are bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "services.common":
            modules |= {a.asname or a.name for a in node.names if a.name == "governance"}
        elif isinstance(node, ast.ImportFrom) and node.module == "services.common.governance":
            functions |= {a.asname or a.name for a in node.names if a.name == "load_file"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == "services.common.governance" and a.asname}
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            count += (isinstance(func, ast.Attribute) and func.attr == "load_file" and isinstance(func.value, ast.Name)
                      and func.value.id in modules) or (isinstance(func, ast.Name) and func.id in functions)
    return count


@pytest.mark.parametrize("program", PROGRAMS)
def test_only_the_metadata_service_loads_the_policy_file(program: str) -> None:
    """What these checks assume, and why only the metadata service gets the file: the gateways ask
    it for the rules over gRPC."""
    assert policy_loads(program) == (1 if program == READER else 0), program
    known = gc_variables() if program == "gc" else declared(f"wharf-{program}")
    assert (POLICY_FILE_VARIABLE in known) == (program == READER), "the variables the checks accept"


def test_every_deployment_ships_the_same_example() -> None:
    assert (POLICY_COMPONENT / "policy.yaml").read_text() == EXAMPLE.read_text()
    assert yaml.safe_load(CHART_VALUES.read_text())["policy"] == yaml.safe_load(EXAMPLE.read_text())
    # Each way to turn it on is documented where its siblings are.
    assert "compose.policy.yaml" in (DEPLOY / "README.md").read_text()
    assert "components/policy" in (K8S / "README.md").read_text()
    assert "policy-values.yaml" in (chart.CHART.parent / "README.md").read_text()
    for overlay in OVERLAYS:
        assert "../../components/policy" in (K8S / "overlays" / overlay / "kustomization.yaml").read_text(), overlay


# --- compose ---------------------------------------------------------------------------------

def override() -> dict[str, Any]:
    return dict(yaml.safe_load(OVERRIDE.read_text()))


def policy_model(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml with compose.policy.yaml, merged as compose merges them: an existing service's
    environment by key and volumes by target (the override sets nothing else, checked below)."""
    model = compose_model(environ)
    for name, definition in interpolated(override(), environ or {})["services"].items():
        service = model["services"][name]
        service["environment"] = {**environment(service), **environment(definition)}
        replaced = {v["target"] for v in definition.get("volumes", [])}
        service["volumes"] = [v for v in service.get("volumes", [])
                              if (v.split(":")[1] if isinstance(v, str) else v["target"]) not in replaced]
        service["volumes"] += definition.get("volumes", [])
    return model


def bind_mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service.get("volumes", []) if isinstance(v, dict) and v["type"] == "bind"}


def test_the_compose_override_follows_the_specification_and_changes_the_metadata_service_alone() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(override()), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    assert sorted(override()) == ["services"] and sorted(override()["services"]) == [READER]
    assert set(override()["services"][READER]) == {"environment", "volumes"}
    # Variables it interpolates are documented in .env.example like compose.yaml's.
    example_env = (DEPLOY / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example_env, re.M))
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", OVERRIDE.read_text()))
    assert used and used <= documented, sorted(used - documented)
    assert "compose.policy.yaml" in example_env


def test_compose_mounts_the_policy_file_into_the_metadata_service_read_only() -> None:
    model = policy_model()
    metadata = model["services"][READER]
    env = environment(metadata)
    assert env[POLICY_FILE_VARIABLE] == POLICY_FILE
    assert set(env) <= declared("wharf-metadata"), sorted(set(env) - declared("wharf-metadata"))
    assert load(MetadataSettings, env).retention_interval == 3600
    tuned = environment(policy_model({"WHARF_RETENTION_INTERVAL": "600"})["services"][READER])
    assert load(MetadataSettings, tuned).retention_interval == 600
    mount = bind_mounts(metadata)[POLICY_FILE]
    # Read-only, and a missing source stops compose rather than mounting an empty directory.
    assert mount["source"] == "./policy.yaml"
    assert mount["read_only"] is True and mount["bind"]["create_host_path"] is False, mount
    # The other services are compose.yaml's, untouched.
    plain = compose_model()
    assert POLICY_FILE_VARIABLE not in environment(plain["services"][READER])
    for name, service in model["services"].items():
        if name != READER:
            assert service == plain["services"][name], name
    # The local file stays out of git (the example is committed).
    assert "/policy.yaml" in (DEPLOY / ".gitignore").read_text().splitlines()


def test_the_compose_metadata_service_loads_the_example_as_mounted(tmp_path: pathlib.Path) -> None:
    """deploy/ prepared as compose.policy.yaml says: policy.yaml copied from the example."""
    metadata = policy_model()["services"][READER]
    prepared = {"./policy.yaml": EXAMPLE.read_text()}
    files = {target: prepared[mount["source"]] for target, mount in bind_mounts(metadata).items()
             if mount["source"] in prepared}
    assert load_as_mounted(files, environment(metadata), tmp_path) == example_policy()


# --- kustomize -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kustomize() -> str:
    return require_tool("kustomize", "go install sigs.k8s.io/kustomize/kustomize/v5")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlays(request: pytest.FixtureRequest, kustomize: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the overlay, the overlay with the policy component)."""
    return render(kustomize, request.param), render(kustomize, f"{request.param}+policy")


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def check_mounts(objects: list[dict[str, Any]], config_map: str) -> None:
    """The metadata service: WHARF_POLICY_FILE and the ConfigMap's policy.yaml read-only at its
    path; every other workload neither variable, mount nor volume of it."""
    pods = workloads(objects)
    assert {"gateway", "blobstore", READER, "auth", "gc"} <= set(pods), sorted(pods)
    for component, (pod, container) in pods.items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        env = plain_env(container)
        if component != READER:
            assert POLICY_FILE_VARIABLE not in env, component
            assert config_map not in {volume_source(v) for v in volumes.values()}, component
            continue
        assert env[POLICY_FILE_VARIABLE] == POLICY_FILE
        directory, _, name = POLICY_FILE.rpartition("/")
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        assert mount["readOnly"] is True
        volume = volumes[mount["name"]]
        assert volume_source(volume) == config_map
        assert volume["configMap"]["items"] == [{"key": "policy.yaml", "path": name}]


def policy_config_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(CONFIG_MAP)]
    return found


def test_the_component_mounts_the_policy_into_the_metadata_service_alone(overlays: Any) -> None:
    plain, with_policy = overlays
    config_map = policy_config_map(with_policy)
    assert re.fullmatch(rf"{CONFIG_MAP}-[a-z0-9]+", config_map["metadata"]["name"]), "a name hash rolls the pods"
    assert governance.parse_document(yaml.safe_load(config_map["data"]["policy.yaml"])) == example_policy()
    check_mounts(with_policy, config_map["metadata"]["name"])
    for _, container in workloads(plain).values():
        assert POLICY_FILE_VARIABLE not in {e["name"] for e in container.get("env", [])}
    # The component changes the metadata Deployment and adds its ConfigMap; nothing else.
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    before, after = {key(o): o for o in plain}, {key(o): o for o in with_policy}
    assert set(after) - set(before) == {key(config_map)}
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {("Deployment", "wharf-metadata")}, changed


def test_kustomize_metadata_service_loads_the_example_as_mounted(overlays: Any, tmp_path: pathlib.Path) -> None:
    _, with_policy = overlays
    pod, container = workloads(with_policy)[READER]
    files = pod_files(with_policy, pod, container, {})
    assert load_as_mounted(files, plain_env(container), tmp_path) == example_policy()


def test_the_component_goes_with_the_others(kustomize: str) -> None:
    """Mirroring, events and a policy together: the metadata service gets the outbox and the file."""
    objects = render(kustomize, "production+mirror+events+policy")
    check_mounts(objects, policy_config_map(objects)["metadata"]["name"])
    _, container = workloads(objects)[READER]
    assert plain_env(container)["WHARF_EVENTS_OUTBOX"] == "on"


# --- Helm ------------------------------------------------------------------------------------

def checksums(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {template["metadata"]["labels"]["app.kubernetes.io/component"]:
            template["metadata"].get("annotations", {}).get("checksum/config", "")
            for o in objects if (template := pod_template(o)) is not None}


def test_the_chart_mounts_the_policy_into_the_metadata_service_alone(tmp_path: pathlib.Path) -> None:
    objects = chart.render("-f", str(CHART_VALUES))
    config_map = chart.of_kind(objects, "ConfigMap")[CONFIG_MAP]
    assert governance.parse_document(yaml.safe_load(config_map["data"]["policy.yaml"])) == example_policy()
    check_mounts(objects, CONFIG_MAP)
    pod, container = workloads(objects)[READER]
    assert load_as_mounted(pod_files(objects, pod, container, {}), plain_env(container), tmp_path) == \
        example_policy()
    # A change of the rules rolls the metadata pods (the config checksum covers the policy's ConfigMap).
    changed = chart.render("-f", str(CHART_VALUES), "--set", "policy.quotas[0].size=20GiB")
    assert checksums(changed)[READER] != checksums(objects)[READER]
    # Empty (the default): no file, no variable, no volume.
    default = chart.render()
    assert CONFIG_MAP not in chart.of_kind(default, "ConfigMap")
    for pod, container in workloads(default).values():
        assert POLICY_FILE_VARIABLE not in {e["name"] for e in container.get("env", [])}
        assert CONFIG_MAP not in {volume_source(v) for v in pod["volumes"]}


def test_the_chart_keeps_whole_numbers_whole_and_takes_the_retention_interval(tmp_path: pathlib.Path) -> None:
    """YAML numbers reach templates as floats: a quota in bytes or keep_last must still parse."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "policy": {"quotas": [{"namespace": "team", "size": 10485760}],
                   "retention": [{"repositories": "ci/**", "keep_last": 10, "older_than": 86400}],
                   "ratelimits": [{"repositories": "**", "requests_per_second": 0.5, "burst": 3}]},
        "metadata": {"env": {"WHARF_RETENTION_INTERVAL": "1800"}}}))
    objects = chart.render("-f", str(values))
    policy = governance.parse_document(yaml.safe_load(chart.of_kind(objects, "ConfigMap")[CONFIG_MAP]["data"]
                                                      ["policy.yaml"]))
    assert policy.quotas[0].size == 10485760 and policy.retention[0].keep_last == 10
    assert policy.retention[0].older_than == 86400 and policy.ratelimits[0].requests_per_second == 0.5
    settings = chart.of_kind(objects, "ConfigMap")["wharf-metadata"]["data"]
    assert load(MetadataSettings, {**settings, "WHARF_REDIS_URL": "redis://r:6379/0"}).retention_interval == 1800


@pytest.mark.parametrize(("values", "message"), [
    (["--set-json", 'policy={"immutible": [{"repositories": "prod/**"}]}'],
     "policy.immutible is not a section of the policy file"),
    (["--set-json", 'policy={"quotas": {"namespace": "team", "size": "1GiB"}}'], "policy.quotas must be a list"),
    (["--set-json", 'policy={"immutable": ["prod/**"]}'], "policy.immutable[0] must be a mapping"),
])
def test_the_chart_refuses_a_policy_the_service_could_not_start_with(values: list[str], message: str) -> None:
    refused = chart.template(*values)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr
