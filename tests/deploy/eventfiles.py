"""The event endpoints file as a container sees it: what deploy/ mounts, loaded with the services'
own loader (services/events/config.py).

Like tests/deploy/mirrorfiles.py: a container's files are written under a temporary root
(``/etc/wharf/events/events.yaml`` becomes ``<root>/etc/wharf/events/events.yaml``), and the
endpoints file's absolute ``secret_file`` paths are moved under the same root; relative ones
resolve from the file's folder as they would in the container. So a file the container does not
mount is missing here too, and ``load`` fails the way the service would at start-up. ``secrets``
is the program's own: the delivery service reads the secret files (``load(environ)``), the
gateway does not (``load(environ, secrets=False)``), so it needs none mounted. The files of a
pod's ConfigMap and Secret volumes come from mirrorfiles.pod_files, which knows no feature.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import yaml

from services.events import config as events_config
from tests.deploy.deployfiles import EVENTS_FILE_VARIABLE

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "events.example.yaml"
# Where every deployment mounts the endpoints file and the secret files.
EVENTS_FILE = "/etc/wharf/events/events.yaml"
SECRETS_DIR = "/etc/wharf/event-secrets"
SECRETS_SECRET = "wharf-event-secrets"


def secret_keys(text: str) -> set[str]:
    """The secret files an endpoints file names under SECRETS_DIR: the keys its Secret (or the
    compose secrets) must have."""
    endpoints = (yaml.safe_load(text) or {}).get("endpoints") or []
    files = [str(e["secret_file"]) for e in endpoints if "secret_file" in e]
    assert all(f.startswith(SECRETS_DIR + "/") for f in files), f"secret files outside {SECRETS_DIR}: {files}"
    return {f.removeprefix(SECRETS_DIR + "/") for f in files}


def _rooted(text: str, root: pathlib.Path) -> str:
    document = yaml.safe_load(text)
    for endpoint in document.get("endpoints") or []:
        if str(endpoint.get("secret_file", "")).startswith("/"):
            endpoint["secret_file"] = str(root / endpoint["secret_file"].lstrip("/"))
    return yaml.safe_dump(document, sort_keys=False)


def load_as_mounted(files: Mapping[str, str], environ: Mapping[str, str],
                    root: pathlib.Path, secrets: bool = True) -> events_config.Events:
    """The endpoints the container with ``files`` (container path -> text) and ``environ`` loads,
    with (the delivery service) or without (the gateway) reading the secret files."""
    own = environ[EVENTS_FILE_VARIABLE]
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_rooted(text, root) if path == own else text)
    return events_config.load({EVENTS_FILE_VARIABLE: str(root / own.lstrip("/"))}, secrets=secrets)
