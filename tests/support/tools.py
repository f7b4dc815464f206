"""Outside tools (skopeo, the conformance suite, docker-registry, ...).

A missing tool skips its test locally with the reason, but fails the test when
CI=true: CI installs every tool (.ci/run), so a skip there would hide a gap.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import NoReturn

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# .ci/run installs Go tools here (GOBIN), so they never depend on a user's PATH.
TOOLS_BIN = ROOT / ".tools" / "bin"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find_tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str, hint: str = "") -> str:
    """The tool's path; skips (locally) or fails (CI=true) when it is missing."""
    found = find_tool(name)
    if found:
        return found
    missing(f"{name} is not installed" + (f" ({hint})" if hint else "") + "; .ci/run installs it")


def missing(reason: str) -> NoReturn:
    """Skips (locally) or fails (CI=true) a test whose outside tool or file is missing."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def isolated_env(home: pathlib.Path, *drop_prefixes: str) -> dict[str, str]:
    """The environment for a client tool with its own HOME and Docker config, so neither the
    user's credentials nor a previous test's login change what a test does."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", *drop_prefixes))}
    env.update(HOME=str(home), DOCKER_CONFIG=str(home / "docker"))
    return env
