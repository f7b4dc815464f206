"""deploy/compose.yaml: valid Compose, and everything it names exists in the code.

Every Wharf service's environment holds only variables its settings object declares and
loads with them; every address names a service and the port it listens on; every file a
service reads lies in a volume it mounts. The gc profile's loop runs for one turn with a
stand-in wharf-gc; Redis runs with the compose arguments until it is full. No Docker engine
is needed: the schema is the Compose Specification's, as `docker compose` ships it
(tests/deploy/data/README.md).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.settings import load, variables
from tests.deploy.deployfiles import (
    COMPOSE_FILE,
    DEPLOY,
    ROOT,
    SETTINGS,
    compose_model,
    compose_raw,
    compose_variables,
    console_scripts,
    dockerfile_stages,
    environment,
    gc_variables,
    listen_ports,
    load_gc,
    mounts,
    size_bytes,
    wharf_services,
)
from tests.deploy.rehearse import fill_redis, run_loop_once

SCHEMA = ROOT / "tests" / "deploy" / "data" / "compose-spec.json"  # compose-go v2.16.2, see data/README.md
# The ports of the third-party images, as their compose commands configure them.
THIRD_PARTY_PORTS = {"redis": {6379}, "minio": {9000}}
WHARF = ("blobstore", "metadata", "auth", "gateway")
# Variables compose.yaml interpolates that are not a Wharf setting: the published port, the
# image tag, the gc profile's schedule and options, Redis's memory ceiling.
COMPOSE_ONLY = {"WHARF_PUBLISHED_PORT", "WHARF_TAG", "WHARF_GC_INTERVAL", "WHARF_GC_GRACE", "WHARF_GC_ARGS",
                "WHARF_REDIS_MAXMEMORY"}


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return compose_model()


def wharf_env(model: dict[str, Any], service: str) -> dict[str, str]:
    """What the service's process sees: its image's ENV, then the compose environment."""
    stage = dockerfile_stages()[1][wharf_services(model)[service]]
    return {**{k: v for k, v in stage.env.items() if k.startswith("WHARF_")}, **environment(model["services"][service])}


def program(model: dict[str, Any], service: str) -> str:
    [name] = dockerfile_stages()[1][wharf_services(model)[service]].cmd
    return name


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(compose_raw()), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", [("gateway", "depends_on", "auth", "condition"), ("redis", "healthcheck", "intervall"),
                                  ("gateway", "ports")])
def test_the_schema_check_catches_mistakes(path: tuple[str, ...]) -> None:
    broken = compose_raw()
    node = broken["services"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "not-a-valid-value"
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(broken)), f"the schema accepted services.{'.'.join(path)}"


def test_wharf_services_are_the_dockerfile_targets(model: dict[str, Any]) -> None:
    targets = wharf_services(model)
    assert sorted(targets) == sorted([*WHARF, "gc"])
    stages = dockerfile_stages()[1]
    for service in WHARF:
        assert targets[service] in stages, f"{service}: no stage {targets[service]!r} in deploy/Dockerfile"
        assert program(model, service) in console_scripts()
        assert program(model, service) in SETTINGS
        assert model["services"][service]["image"] == f"wharf/{service}:dev"
    # The collector runs the metadata image (no image of its own), built the same way so that
    # compose builds it rather than trying to pull it.
    assert targets["gc"] == "metadata"
    assert model["services"]["gc"]["build"] == model["services"]["metadata"]["build"]
    assert model["services"]["gc"]["image"] == model["services"]["metadata"]["image"]


@pytest.mark.parametrize("service", WHARF)
def test_every_variable_is_a_setting_of_the_service(model: dict[str, Any], service: str) -> None:
    settings = SETTINGS[program(model, service)]
    declared = variables(settings)
    env = environment(model["services"][service])
    unknown = sorted(set(env) - set(declared))
    assert not unknown, f"{service} sets variables {settings.__name__} does not read: {unknown}"
    load(settings, wharf_env(model, service))  # each value parses


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (DEPLOY / ".env.example").read_text(), re.M))
    assert compose_variables() <= documented, sorted(compose_variables() - documented)
    known = set().union(*(variables(s) for s in SETTINGS.values())) | COMPOSE_ONLY
    assert compose_variables() <= known, sorted(compose_variables() - known)


def test_addresses_name_services_and_the_ports_they_listen_on(model: dict[str, Any]) -> None:
    listening = {name: listen_ports(wharf_env(model, name)) for name in WHARF} | THIRD_PARTY_PORTS
    for service in (*WHARF, "gc"):
        for key, value in environment(model["services"][service]).items():
            for host, port in re.findall(r"(?:dns:///|//|^)([a-z][a-z0-9-]*):(\d+)", value):
                assert host in listening, f"{service} {key}={value}: no service {host}"
                assert int(port) in listening[host], f"{service} {key}={value}: {host} listens on {listening[host]}"
    for service in WHARF:
        for argument in model["services"][service]["healthcheck"]["test"][2:]:
            port = int(re.findall(r":(\d+)", argument)[-1])
            assert port in listening[service], f"{service} healthcheck {argument}: not a port it listens on"


def test_gateway_reaches_every_blobstore_replica_and_requires_tokens(model: dict[str, Any]) -> None:
    gateway = environment(model["services"]["gateway"])
    assert re.fullmatch(r"dns:///blobstore:\d+", gateway["WHARF_BLOBSTORE_ADDR"])
    assert gateway["WHARF_AUTH"] == "token"
    assert [p.split(":")[-1] for p in model["services"]["gateway"]["ports"]] == ["5000"]
    assert gateway["WHARF_PORT"] == "5000" and gateway["WHARF_HOST"] == "0.0.0.0"
    # `--scale blobstore=N` needs a service without a fixed container name or host port.
    blobstore = model["services"]["blobstore"]
    assert "ports" not in blobstore and "container_name" not in blobstore
    assert not any("container_name" in service for service in model["services"].values())
    for service in ("blobstore", "metadata", "auth"):
        listen = [v for k, v in environment(model["services"][service]).items() if k.endswith("_LISTEN")]
        assert [v.split(":")[0] for v in listen] == ["0.0.0.0"], f"{service} must listen beyond loopback"


def test_volumes_are_declared_and_hold_what_services_read_and_keep(model: dict[str, Any]) -> None:
    declared = set(model["volumes"])
    for name, service in model["services"].items():
        for mount in mounts(service):
            if mount.source.startswith("./"):  # a file of deploy/ (the observability profile's configuration)
                assert (DEPLOY / mount.source).exists() and mount.read_only, f"{name}: bind mount {mount.source}"
                continue
            assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
    for service in (*WHARF, "gc"):
        for key, value in wharf_env(model, service).items():
            if key.endswith("_FILE") or key == "WHARF_AUTH_KEYS_DIR":
                inside = [m for m in mounts(model["services"][service]) if value.startswith(m.target + "/")
                          or value == m.target]
                assert inside, f"{service} {key}={value} is in no volume"
                assert inside[0].read_only == key.endswith("_FILE"), f"{service}: {key}'s volume mode"
    redis = model["services"]["redis"]
    assert [m.source for m in mounts(redis) if m.target == "/data"] == ["redis-data"]
    assert redis["command"][:5] == ["redis-server", "--appendonly", "yes", "--appendfsync", "always"]
    assert [m.source for m in mounts(model["services"]["minio"]) if m.target == "/data"] == ["minio-data"]


def test_minio_the_bucket_and_the_blob_store_agree(model: dict[str, Any]) -> None:
    services = model["services"]
    blobstore, minio, bucket = (environment(services[n]) for n in ("blobstore", "minio", "init-bucket"))
    assert blobstore["WHARF_STORAGE"] == "s3"
    assert blobstore["WHARF_S3_ENDPOINT"] == "minio:9000"
    assert blobstore["WHARF_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"] == bucket["MINIO_ROOT_USER"]
    assert blobstore["WHARF_S3_BUCKET"] == bucket["BUCKET"]
    assert "mc mb --ignore-existing" in services["init-bucket"]["command"][0]

    def volume_file(service: str, path: str) -> tuple[str, str]:
        [mount] = [m for m in mounts(services[service]) if path.startswith(m.target + "/")]
        return mount.source, path[len(mount.target):]
    assert volume_file("minio", minio["MINIO_ROOT_PASSWORD_FILE"]) == \
        volume_file("blobstore", blobstore["WHARF_S3_SECRET_KEY_FILE"]) == ("secret-s3", "/secret-key")
    script = services["init-secrets"]["command"][0]
    [out] = [m for m in mounts(services["init-secrets"]) if m.source == "secret-s3"]
    assert f"{out.target}/secret-key" in script
    [admin] = [m for m in mounts(services["auth"]) if m.source == "secret-admin"]
    assert environment(services["auth"])["WHARF_ADMIN_PASSWORD_FILE"] == f"{admin.target}/password"


def test_every_long_running_service_is_checked_restarted_and_limited(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        if name.startswith("init-"):
            assert service["restart"] == "no", name
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert {"cpus", "memory"} <= set(limits), f"{name} has no resource limits"
    for name in (*WHARF, "gc"):
        service = model["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["healthcheck"]["test"][1] == ("test" if name == "gc" else "wharf-healthcheck"), name


def test_start_order_waits_for_health(model: dict[str, Any]) -> None:
    services = model["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
            expected = "service_completed_successfully" if dependency.startswith("init-") else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dependency}"
    assert set(services["gateway"]["depends_on"]) == {"blobstore", "metadata", "auth"}
    assert "init-bucket" in services["blobstore"]["depends_on"]
    assert "redis" in services["metadata"]["depends_on"] and "redis" in services["auth"]["depends_on"]

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        assert start not in seen, f"depends_on cycle through {start}"
        return any(d == goal or reaches(d, goal, seen | {start}) for d in services[start].get("depends_on", {}))
    for name in services:
        assert not reaches(name, name)


def test_no_secret_is_committed(model: dict[str, Any]) -> None:
    secret_keys = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE")
    environ = {"WHARF_ADMIN_PASSWORD": "from-dot-env", "WHARF_S3_SECRET_KEY": "from-dot-env"}
    for name, service in compose_model(environ)["services"].items():
        for key, value in environment(service).items():
            if secret_keys.search(key) and not key.endswith("_FILE"):
                assert value in ("", "from-dot-env"), f"{name} {key} has a value in compose.yaml"
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if secret_keys.search(line.split("=")[0]) and "=" in line:
            assert line.startswith("#") and line.endswith("="), f".env.example holds a secret: {line}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines(), "git would commit deploy/.env"


def test_images_are_pinned(model: dict[str, Any]) -> None:
    base = dockerfile_stages()[0]["PYTHON_IMAGE"]
    for name, service in model["services"].items():
        image = service["image"]
        if name in WHARF:
            continue
        assert re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", image) and ":latest" not in image, f"{name}: {image}"
        if image.startswith("python:"):
            assert image == base, f"{name} runs {image}, the Dockerfile builds on {base}"


def test_docker_compose_up_works_from_the_repository_root() -> None:
    """The root compose.yaml includes deploy/compose.yaml and adds nothing, so everything the
    tests above check about deploy/compose.yaml holds for `docker compose up` at the root."""
    root = yaml.safe_load((ROOT / "compose.yaml").read_text())
    errors = list(jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).iter_errors(root))
    assert not errors, errors
    assert root["name"] == compose_raw()["name"]
    [entry] = root["include"]
    assert (ROOT / entry["path"]).resolve() == COMPOSE_FILE.resolve()
    # Relative paths in the included file (build context "..", deploy/.env) resolve from deploy/.
    assert (ROOT / entry["project_directory"]).resolve() == COMPOSE_FILE.parent.resolve()
    assert set(root) == {"name", "include"}


# --- the gc profile ------------------------------------------------------------------------

def test_the_gc_profile_gets_the_settings_of_the_services_it_works_behind(model: dict[str, Any]) -> None:
    services = model["services"]
    profiled = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiled["gc"] == ["gc"], "garbage collection is optional: `--profile gc`"
    assert not set(profiled) & {*WHARF, "redis", "minio"}, "the registry itself runs without a profile"
    gc = environment(services["gc"])
    unknown = sorted(set(gc) - gc_variables())
    assert not unknown, f"gc sets variables wharf-gc does not read: {unknown}"
    load_gc(wharf_env(model, "gc"))
    # The same Redis and bucket as the services, and the services' own addresses.
    blobstore, metadata, gateway = (environment(services[n]) for n in ("blobstore", "metadata", "gateway"))
    storage = {k: v for k, v in blobstore.items() if k == "WHARF_STORAGE" or k.startswith("WHARF_S3_")}
    storage.pop("WHARF_S3_REDIRECT")  # how clients fetch blobs: nothing to the collector
    assert storage.items() <= gc.items(), "gc must list the bucket the blob store writes"
    assert gc["WHARF_REDIS_URL"] == metadata["WHARF_REDIS_URL"]
    assert gc["WHARF_INTERNAL_TOKEN_FILE"] == metadata["WHARF_INTERNAL_TOKEN_FILE"]
    assert gc["WHARF_BLOBSTORE_ADDR"] == gateway["WHARF_BLOBSTORE_ADDR"]
    assert gc["WHARF_METADATA_ADDR"] == gateway["WHARF_METADATA_ADDR"]
    assert {d for d, rule in services["gc"]["depends_on"].items() if rule["condition"] == "service_healthy"} == \
        {"redis", "blobstore", "metadata"}


def gc_loop_turn(environ: dict[str, str], exit_code: int, workdir: pathlib.Path) -> tuple[Any, list[str]]:
    """One turn of the gc service's loop as compose would start it with ``environ`` in deploy/.env,
    wharf-gc standing in: it records its arguments and exits with ``exit_code``."""
    service = compose_model(environ)["services"]["gc"]
    args = workdir / "wharf-gc-args"
    turn = run_loop_once([*service["entrypoint"], *service["command"]], workdir,
                         {"wharf-gc": f"printf '%s\\n' \"$@\" > '{args}'\nexit {exit_code}"})
    assert turn.returncode == 0, f"the loop did not stop on TERM: {turn.returncode}\n{turn.stderr}"
    return turn, args.read_text().splitlines()


def healthy(turn: Any, model: dict[str, Any]) -> bool:
    """The gc service's health check, run against the turn's /tmp."""
    kind, *argv = model["services"]["gc"]["healthcheck"]["test"]
    assert kind == "CMD"
    argv = [str(turn.container_path(a)) if a.startswith("/tmp/") else a for a in argv]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0


def test_the_gc_loop_runs_wharf_gc_then_sleeps_the_interval(model: dict[str, Any], tmp_path: pathlib.Path) -> None:
    turn, args = gc_loop_turn({}, 0, tmp_path / "default")
    assert args == ["--grace", "3600"] and turn.slept == ["24h"]
    assert healthy(turn, model)
    environ = {"WHARF_GC_INTERVAL": "6h", "WHARF_GC_GRACE": "7200", "WHARF_GC_ARGS": "--dry-run --delete-untagged"}
    turn, args = gc_loop_turn(environ, 0, tmp_path / "set")
    assert args == ["--grace", "7200", "--dry-run", "--delete-untagged"] and turn.slept == ["6h"]


def test_a_failed_gc_run_makes_the_service_unhealthy_until_one_succeeds(model: dict[str, Any],
                                                                         tmp_path: pathlib.Path) -> None:
    failed, _ = gc_loop_turn({}, 1, tmp_path)
    assert failed.slept == ["24h"], "a failed run waits for the next turn like any other"
    assert not healthy(failed, model)
    succeeded, _ = gc_loop_turn({}, 0, tmp_path)  # the same /tmp, as the container keeps it
    assert healthy(succeeded, model)


# --- Redis ---------------------------------------------------------------------------------

def test_redis_refuses_writes_rather_than_evict(model: dict[str, Any], tmp_path: pathlib.Path) -> None:
    redis = model["services"]["redis"]
    program, *args = redis["command"]
    assert program == "redis-server"
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--maxmemory-policy"] == "noeviction"
    # The ceiling leaves half the container's memory to the AOF rewrite's fork and the clients.
    limit = size_bytes(redis["deploy"]["resources"]["limits"]["memory"])
    assert 0 < size_bytes(options["--maxmemory"]) <= limit // 2, (options["--maxmemory"], limit)
    assert compose_model({"WHARF_REDIS_MAXMEMORY": "1gb"})["services"]["redis"]["command"][
        args.index("--maxmemory") + 2] == "1gb"
    # Run with these arguments (a small ceiling so that it fills): writes are refused, nothing is lost.
    filled = fill_redis(args, tmp_path)
    assert filled.policy == "noeviction"
    assert 0 < filled.written < 10_000 and filled.refusal.startswith("OutOfMemoryError"), filled
    assert filled.kept == filled.written, "Redis evicted keys"
