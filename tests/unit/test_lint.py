"""ruff over the whole tree (generated code excluded by pyproject.toml), the same as `make lint`."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
LINTED = ("services", "tests", "scripts", "bench", "client", "examples")


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency: `make test` installs it"
    result = subprocess.run([ruff, "check", *LINTED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_lint_checks_what_this_test_checks() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    ruff_line = next(line for line in recipe.splitlines() if "ruff check" in line)
    assert ruff_line.split("ruff check", 1)[1].split() == list(LINTED)
    assert "mypy services client" in recipe  # what tests/unit/test_types.py runs
