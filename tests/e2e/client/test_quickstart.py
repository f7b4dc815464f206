"""The README's quick start, line by line, against a running Wharf: it needs no internet."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

from tests.e2e.client.conftest import Registry, Result

ROOT = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "hello"


def test_the_quick_start_pushes_pulls_and_lists_the_example(wharf: Registry, wharf_cli: Callable[..., Result],
                                                            tmp_path: pathlib.Path) -> None:
    ref = f"{wharf.host}/demo/hello:v1"
    wharf_cli("push", str(EXAMPLE), ref)
    wharf_cli("pull", ref, str(tmp_path / "hello"))
    pulled = json.loads((tmp_path / "hello" / "index.json").read_text())
    shipped = json.loads((EXAMPLE / "index.json").read_text())
    assert pulled["manifests"][0]["digest"] == shipped["manifests"][0]["digest"]
    assert wharf_cli("tags", f"{wharf.host}/demo/hello").text.split() == ["v1"]
    assert "Platform:   linux/amd64" in wharf_cli("inspect", ref).text
    readme = (ROOT / "README.md").read_text()
    assert "wharf push examples/hello 127.0.0.1:5000/demo/hello:v1" in readme


def test_what_the_example_is_not_is_an_error(wharf: Registry, wharf_cli: Callable[..., Result],
                                             tmp_path: pathlib.Path) -> None:
    """An amd64-only image asked for arm64 is not found (not the amd64 image); pulling an image as
    an artifact is an error, not an empty success."""
    ref = f"{wharf.host}/demo/not:v1"
    wharf_cli("push", str(EXAMPLE), ref)
    assert "is an image for linux/amd64, not linux/arm64" in wharf_cli("inspect", ref, "--platform", "linux/arm64",
                                                                       expect=4).err
    assert "Platform:   linux/amd64" in wharf_cli("inspect", ref, "--platform", "linux/amd64").text
    refused = wharf_cli("artifact", "pull", ref, "-o", str(tmp_path / "out"), expect=2)
    assert "an image, not an artifact" in refused.err
