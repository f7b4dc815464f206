"""The committed gRPC code must be what protos/ generates today."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _files(base: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "genproto.py"), "--out", str(tmp_path)], check=True)
    fresh = _files(tmp_path / "services" / "gen")
    committed = _files(ROOT / "services" / "gen")
    assert sorted(fresh) == sorted(committed), "run `make gen`: generated files differ from protos/"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"run `make gen` and commit: stale generated files {stale}"
