"""Regenerates the CRD schemas in this directory from the prometheus-operator Go module.

    python tests/deploy/data/crds/vendor.py

`go mod download` fetches the module (from the Go module proxy, into the module cache) when
it is not there yet. Each CRD's v1 openAPIV3Schema is written as <Kind>.json with its
descriptions removed: they are documentation, not constraints, and most of the size.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import yaml

MODULE = "github.com/prometheus-operator/prometheus-operator"
VERSION = "v0.85.0"
CRD_DIR = "example/prometheus-operator-crd"
KINDS = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}
HERE = pathlib.Path(__file__).resolve().parent


def module_dir() -> pathlib.Path:
    result = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"], capture_output=True,
                            text=True, check=True, cwd=HERE, env={**os.environ, "GOFLAGS": "-mod=mod"})
    return pathlib.Path(json.loads(result.stdout)["Dir"])


def without_descriptions(node: Any) -> Any:
    """The schema without its `description` strings (a property *named* description, whose
    value is a schema object, stays)."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    return node


def main() -> None:
    source = module_dir()
    for kind, plural in KINDS.items():
        path = f"{CRD_DIR}/monitoring.coreos.com_{plural}.yaml"
        crd = yaml.safe_load((source / path).read_text())
        assert crd["spec"]["names"]["kind"] == kind, path
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = {"$comment": f"monitoring.coreos.com/v1 {kind}: openAPIV3Schema of {MODULE}@{VERSION} {path}, "
                              "descriptions removed (tests/deploy/data/crds/vendor.py)",
                  **without_descriptions(version["schema"]["openAPIV3Schema"])}
        (HERE / f"{kind}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    shutil.copyfile(source / "LICENSE", HERE / "prometheus-operator.LICENSE")
    shutil.copyfile(source / "NOTICE", HERE / "prometheus-operator.NOTICE")


if __name__ == "__main__":
    main()
