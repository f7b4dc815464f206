"""The mirrors' upstreams file as a container sees it: what deploy/ mounts, loaded with the
services' own loader (services/mirror/config.py).

A container's files are written under a temporary root (``/etc/wharf/mirrors/mirrors.yaml``
becomes ``<root>/etc/wharf/mirrors/mirrors.yaml``), and the upstreams file's absolute
``password_file`` paths are moved under the same root; relative ones resolve from the file's
folder as they would in the container. So a file the container does not mount is missing here
too, and ``load`` fails the way the service would at start-up. ``secrets`` is the service's own:
the blob store reads the password files (``load(environ)``), the gateway and the auth service do
not (``load(environ, secrets=False)``), so they need none mounted.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from services.mirror import config as mirror_config

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "mirrors.example.yaml"
# Where every deployment mounts the upstreams file and the password files.
MIRRORS_FILE = "/etc/wharf/mirrors/mirrors.yaml"
CREDENTIALS_DIR = "/etc/wharf/mirror-credentials"
CREDENTIALS_SECRET = "wharf-mirror-credentials"


def credential_keys(text: str) -> set[str]:
    """The password files an upstreams file names under CREDENTIALS_DIR: the keys its Secret
    (or the files its compose directory) must have."""
    upstreams = (yaml.safe_load(text) or {}).get("upstreams") or []
    files = [str(u["password_file"]) for u in upstreams if "password_file" in u]
    assert all(f.startswith(CREDENTIALS_DIR + "/") for f in files), f"password files outside {CREDENTIALS_DIR}: {files}"
    return {f.removeprefix(CREDENTIALS_DIR + "/") for f in files}


def _rooted(text: str, root: pathlib.Path) -> str:
    document = yaml.safe_load(text)
    for upstream in document.get("upstreams") or []:
        if str(upstream.get("password_file", "")).startswith("/"):
            upstream["password_file"] = str(root / upstream["password_file"].lstrip("/"))
    return yaml.safe_dump(document, sort_keys=False)


def load_as_mounted(files: Mapping[str, str], environ: Mapping[str, str],
                    root: pathlib.Path, secrets: bool = True) -> mirror_config.Mirrors:
    """The upstreams the container with ``files`` (container path -> text) and ``environ`` loads,
    with (the blob store) or without (the gateway, auth) reading the password files."""
    own = environ[mirror_config.OWN_FILE]
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_rooted(text, root) if path == own else text)
    return mirror_config.load({mirror_config.OWN_FILE: str(root / own.lstrip("/"))}, secrets=secrets)


def pod_files(objects: Iterable[dict[str, Any]], pod: Mapping[str, Any], container: Mapping[str, Any],
              secret_keys: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """The files of ``container``'s ConfigMap and Secret volumes: container path -> text.

    A rendered Secret gives its own keys, one created outside the manifests the keys its
    documentation names (``secret_keys``; others are left out); a Secret's values are placeholders."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {"ConfigMap": {}, "Secret": {}}
    for o in objects:
        if o["kind"] in by_kind:
            by_kind[o["kind"]][o["metadata"]["name"]] = o
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source = volume["configMap"]
            data = dict(by_kind["ConfigMap"][source["name"]]["data"])
        elif "secret" in volume:
            source = volume["secret"]
            rendered = by_kind["Secret"].get(source["secretName"])
            if rendered is not None:
                keys = {*(rendered.get("data") or {}), *(rendered.get("stringData") or {})}
            elif source["secretName"] in secret_keys:
                keys = set(secret_keys[source["secretName"]])
            else:
                continue  # a Secret of something else, made outside the manifests
            data = {key: f"placeholder {key}" for key in keys}
        else:
            continue
        items = source.get("items")
        entries = {item["path"]: data[item["key"]] for item in items} if items else data
        for path, text in entries.items():
            files[f"{mount['mountPath']}/{path}"] = text
    return files
