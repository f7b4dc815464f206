"""Reads what deploy/ declares: the compose model, the Dockerfile's stages, kustomize output.

The checks compare these declarations with the code: which program each image or
container runs, and which settings object (services/*/settings.py) that program loads.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import yaml

from services.api.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.blobstore.settings import BlobStoreSettings
from services.common.settings import load, variables
from services.events import config as events_config
from services.events.settings import EventsSettings
from services.gc.settings import GcSettings
from services.metadata.settings import MetadataSettings
from services.mirror import config as mirror_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "production")
# Each overlay with the mirror component included as k8s/components/mirror says (render()).
MIRRORED_OVERLAYS = tuple(f"{overlay}+mirror" for overlay in OVERLAYS)
MIRROR_COMPONENT = K8S / "components" / "mirror"
# Each overlay with the events component included as k8s/components/events says (render()).
EVENTS_OVERLAYS = tuple(f"{overlay}+events" for overlay in OVERLAYS)
EVENTS_COMPONENT = K8S / "components" / "events"
# Each overlay with the policy component included as k8s/components/policy says (render()).
POLICY_OVERLAYS = tuple(f"{overlay}+policy" for overlay in OVERLAYS)
POLICY_COMPONENT = K8S / "components" / "policy"
# The variable naming a section's own file (services/common/yaml_section.py: WHARF_<SECTION>_FILE).
EVENTS_FILE_VARIABLE = f"WHARF_{events_config.SECTION.upper()}_FILE"
# The governance rules' own file (services/common/governance.py: the section "policy").
POLICY_FILE_VARIABLE = "WHARF_POLICY_FILE"

# The program each image or container runs -> the settings object that program loads.
SETTINGS: dict[str, type] = {
    "wharf-gateway": GatewaySettings,
    "wharf-blobstore": BlobStoreSettings,
    "wharf-metadata": MetadataSettings,
    "wharf-auth": AuthSettings,
    "wharf-events": EventsSettings,
}


# Sections of structured configuration a program reads from their own file besides its settings
# (services/common/config_file.py): the gateway, the blob store, auth (who may pull a mirrored
# prefix) and wharf-gc (each upstream's size_limit, for eviction) read the mirrors' upstreams; the
# delivery service, the gateway (the share of pulls to record) and the metadata service (whether
# to write the outbox, when WHARF_EVENTS_OUTBOX is auto) the event endpoints; the metadata service
# alone the governance rules (the gateways get them from it over gRPC).
SECTION_FILES: dict[str, frozenset[str]] = {
    "wharf-gateway": frozenset({mirror_config.OWN_FILE, EVENTS_FILE_VARIABLE}),
    "wharf-blobstore": frozenset({mirror_config.OWN_FILE}),
    "wharf-auth": frozenset({mirror_config.OWN_FILE}),
    "wharf-gc": frozenset({mirror_config.OWN_FILE}),
    "wharf-metadata": frozenset({EVENTS_FILE_VARIABLE, POLICY_FILE_VARIABLE}),
    "wharf-events": frozenset({EVENTS_FILE_VARIABLE}),
}


def declared(program: str) -> set[str]:
    """Every variable ``program`` reads: its settings object's, and its section files'."""
    return set(variables(SETTINGS[program])) | SECTION_FILES.get(program, frozenset())


# wharf-gc loads three settings objects from one environment: its own, the metadata service's
# (Redis) and the blob store's (the bucket).
GC_SETTINGS: tuple[type, ...] = (GcSettings, MetadataSettings, BlobStoreSettings)


def gc_variables() -> set[str]:
    """Every variable wharf-gc reads: its settings objects', and its section files'."""
    return set().union(*(variables(cls) for cls in GC_SETTINGS)) | SECTION_FILES["wharf-gc"]


def load_gc(environ: Mapping[str, str]) -> None:
    """Loads each settings object wharf-gc loads: SettingsError when a value does not parse."""
    for cls in GC_SETTINGS:
        load(cls, environ)


_SIZE = re.compile(r"^(?P<number>\d+)(?P<unit>[a-zA-Z]*)$")
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def size_bytes(value: str) -> int:
    """A memory size as Redis (256mb, 1gb), compose (512M) or Kubernetes (512Mi) write it.

    Redis reads k/m/g as powers of 1000 and kb/mb/gb as powers of 1024; compose's K/M/G and
    Kubernetes' Ki/Mi/Gi are powers of 1024 (Kubernetes' plain K/M/G are not used here)."""
    match = _SIZE.match(value.strip())
    assert match, f"not a memory size: {value!r}"
    unit = match.group("unit")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(unit) or _UNITS[unit.lower()]
    return int(match.group("number")) * factor


def console_scripts() -> dict[str, str]:
    """pyproject's [project.scripts]: program name -> "module:function"."""
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def config_loads(program: str, package: str) -> list[bool]:
    """The ``secrets`` argument of every call of ``<package>.config.load`` (the events' endpoints,
    the mirrors' upstreams) in ``program``'s entry module, as that program starts: which programs
    read the secret files is what the deployments mount them for."""
    module = console_scripts()[program].split(":")[0]
    tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text())
    modules, functions = set(), set()  # the names the loader's module, or the loader, are bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            modules |= {a.asname or a.name for a in node.names if a.name == "config"}
        elif isinstance(node, ast.ImportFrom) and node.module == f"{package}.config":
            functions |= {a.asname or a.name for a in node.names if a.name == "load"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name)
                and func.value.id in modules) or (isinstance(func, ast.Name) and func.id in functions):
            secrets = [k.value for k in node.keywords if k.arg == "secrets"]
            found.append(bool(ast.literal_eval(secrets[0])) if secrets else True)
    return found


def program_argv(program: str, *args: str) -> list[str]:
    """How to run a console script from this checkout with the test interpreter."""
    import sys

    module, function = console_scripts()[program].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())", *args]


@functools.cache
def program_options(program: str) -> frozenset[str]:
    """The long options a console script's --help lists."""
    usage = subprocess.run(program_argv(program, "--help"), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0, usage.stderr
    return frozenset(re.findall(r"--[a-z][a-z-]*", usage.stdout))


# --- compose ------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                       r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def compose_raw() -> dict[str, Any]:
    """The compose file as YAML (anchors and merge keys resolved, variables not)."""
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = environ.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"{name} is required: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""
    return _VARIABLE.sub(substitute, value)


def interpolated(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [interpolated(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, environ) for key, value in node.items()}
    return node


def compose_model(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose` sees it with ``environ`` (default: nothing set)."""
    return dict(interpolated(compose_raw(), environ or {}))


def compose_variables() -> set[str]:
    """Every variable the compose file interpolates."""
    matches = _VARIABLE.finditer(COMPOSE_FILE.read_text())
    return {name for m in matches if (name := m.group("name") or m.group("bare"))}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's environment (mapping or list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def wharf_services(model: Mapping[str, Any]) -> dict[str, str]:
    """Compose services built from deploy/Dockerfile -> their build target."""
    found = {}
    for name, service in model["services"].items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile":
            found[name] = build["target"]
    return found


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            found.append(Mount(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            found.append(Mount(volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


def listen_ports(env: Mapping[str, str]) -> set[int]:
    """The ports a Wharf service listens on, from its settings: its service and its metrics."""
    ports = {int(value.rsplit(":", 1)[1]) for key, value in env.items()
             if key.endswith(("_LISTEN", "METRICS_ADDR")) and value}
    if "WHARF_PORT" in env:
        ports.add(int(env["WHARF_PORT"]))
    return ports


# --- Dockerfile ---------------------------------------------------------------------------

@dataclasses.dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cmd: list[str] = dataclasses.field(default_factory=list)
    user: str = ""
    healthcheck: list[str] = dataclasses.field(default_factory=list)
    expose: list[int] = dataclasses.field(default_factory=list)
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def dockerfile_instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (text if text is not None else DOCKERFILE.read_text()).splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        lines.append((keyword.upper(), rest.strip()))
    return lines


def _exec_form(arguments: str) -> list[str]:
    return list(json.loads(arguments)) if arguments.startswith("[") else ["/bin/sh", "-c", arguments]


def dockerfile_stages() -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name); a stage starts with its parent's settings."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            parent = stages.get(base)
            current = Stage(name, base, dict(parent.env) if parent else {}, list(parent.cmd) if parent else [],
                            parent.user if parent else "", list(parent.healthcheck) if parent else [])
            stages[name] = current
        elif current is not None:
            current.instructions.append((keyword, rest))
            if keyword == "ENV":
                current.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
            elif keyword == "CMD":
                current.cmd = _exec_form(rest)
            elif keyword == "USER":
                current.user = rest
            elif keyword == "EXPOSE":
                current.expose = [int(port.split("/")[0]) for port in rest.split()]
            elif keyword == "HEALTHCHECK":
                current.healthcheck = _exec_form(rest[rest.index("CMD") + 3:].strip())
    return args, stages


# --- kustomize ----------------------------------------------------------------------------

# Each component -> the ConfigMap its kustomization.yaml asks the overlay to generate, and the file
# (in the overlay, a copy of the component's example) it is generated from.
COMPONENT_FILES = {"mirror": ("wharf-mirrors", "mirrors.yaml"), "events": ("wharf-event-endpoints", "events.yaml"),
                   "policy": ("wharf-policy", "policy.yaml")}


def render(kustomize: str, overlay: str) -> list[dict[str, Any]]:
    """`kustomize build` of an overlay: every object it would apply. ``<overlay>+mirror`` is the
    overlay with the mirror component, added to a copy of deploy/k8s the way the component's
    kustomization.yaml says: the component, and a ``wharf-mirrors`` ConfigMap generated from a
    mirrors.yaml in the overlay (here the component's example). ``<overlay>+events`` likewise adds
    the events component and a ``wharf-event-endpoints`` ConfigMap from an events.yaml, and
    ``<overlay>+policy`` the policy component and a ``wharf-policy`` ConfigMap from a policy.yaml;
    ``<overlay>+mirror+events`` both, and so on."""
    name, *components = overlay.split("+")
    if not components:
        return _build(kustomize, K8S / "overlays" / name, overlay)
    with tempfile.TemporaryDirectory() as tree:
        k8s = pathlib.Path(tree) / "k8s"
        shutil.copytree(K8S, k8s)
        directory = k8s / "overlays" / name
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for component in components:
            assert component in COMPONENT_FILES, f"no component {component!r}"
            config_map, file = COMPONENT_FILES[component]
            kustomization.setdefault("components", []).append(f"../../components/{component}")
            kustomization.setdefault("configMapGenerator", []).append({"name": config_map, "files": [file]})
            shutil.copy(K8S / "components" / component / file, directory / file)
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return _build(kustomize, directory, overlay)


def _build(kustomize: str, directory: pathlib.Path, overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run([kustomize, "build", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kustomize build of {overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_template(o: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (Deployment, StatefulSet, CronJob), None for any other object."""
    if o["kind"] in ("Deployment", "StatefulSet"):
        return dict(o["spec"]["template"])
    if o["kind"] == "CronJob":
        return dict(o["spec"]["jobTemplate"]["spec"]["template"])
    return None


# Kubernetes versions the manifests and the chart are validated against (oldest supported, newest).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def schema_errors(objects: list[dict[str, Any]], version: str) -> list[str]:
    """Every object that the Kubernetes ``version`` schemas refuse, one line each (strict: no unknown field)."""
    import kubernetes_validate

    errors = []
    for o in objects:
        if o["apiVersion"].startswith(MONITORING_GROUP):  # custom resources: not in the Kubernetes schemas
            errors += crd_errors(o)
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {'/'.join(map(str, err.path))}: {err.message}")
    return errors


# --- prometheus-operator custom resources -------------------------------------------------

MONITORING_GROUP = "monitoring.coreos.com/"
# Each CRD's openAPIV3Schema, vendored from the prometheus-operator module (data/crds/README.md).
CRD_SCHEMAS = ROOT / "tests" / "deploy" / "data" / "crds"


def _int_or_string(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if value and (isinstance(instance, bool) or not isinstance(instance, int | str)):
        yield jsonschema.ValidationError(f"{instance!r} is neither an integer nor a string")


# OpenAPI v3 schemas are JSON Schema draft 4 plus Kubernetes' extensions; of those only
# int-or-string constrains values here (list-type and map-type describe merges).
_CrdValidator = jsonschema.validators.extend(jsonschema.Draft4Validator,
                                             {"x-kubernetes-int-or-string": _int_or_string})


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema refusing fields it does not name, as `kubectl apply --validate=strict` does
    (the API server would silently drop them), and with Go's inline regex flags moved to the
    front where Python needs them."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _strict(s) for name, s in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]]
    if "pattern" in schema:
        out["pattern"] = re.sub(r"^\^(\(\?[a-z]+\))", r"\1^", schema["pattern"])
    return out


@functools.cache
def crd_validator(kind: str) -> Any:
    path = CRD_SCHEMAS / f"{kind}.json"
    assert path.is_file(), f"no vendored schema for {kind} in {CRD_SCHEMAS}"
    schema = _strict(json.loads(path.read_text()))
    _CrdValidator.check_schema(schema)
    return _CrdValidator(schema)


def crd_errors(o: dict[str, Any]) -> list[str]:
    """A prometheus-operator object's errors against its vendored CRD schema, one line each."""
    where = f"{o['kind']}/{o['metadata']['name']}"
    if o["apiVersion"] != MONITORING_GROUP + "v1":
        return [f"{where}: apiVersion {o['apiVersion']} is not the vendored {MONITORING_GROUP}v1"]
    errors = sorted(crd_validator(o["kind"]).iter_errors(o), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
