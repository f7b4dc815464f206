"""A service that cannot start says why in one line, never a traceback (the operator's first hour:
a container started without its secret mounted, a configuration file naming a missing extension).

Before: every service read the internal secret's file as it built its servers or clients, after
its settings were checked, and a missing or short file stopped it with a traceback ending in
``SettingsError``; the gateway's configuration errors were followed by gevent's "Exception ignored
... greenlet is being finalized" at interpreter shutdown.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = {"api": "wharf-gateway", "auth": "wharf-auth", "blobstore": "wharf-blobstore",
            "events": "wharf-events", "metadata": "wharf-metadata"}


def _start(module: str, tmp_path: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    environ.update({"WHARF_DATA_DIR": str(tmp_path), "WHARF_REDIS_URL": "redis://127.0.0.1:1/0",
                    "WHARF_PORT": "1", "WHARF_STORAGE_ROOT": str(tmp_path / "blobs"), **env})
    return subprocess.run([sys.executable, "-m", f"services.{module}"], env=environ, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("module", list(SERVICES))
def test_a_missing_or_short_internal_secret_stops_a_service_in_one_line(module: str, tmp_path: pathlib.Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc")
    for value, message in (("", "WHARF_INTERNAL_TOKEN_FILE must name a file holding the stack's shared secret"),
                           (str(short), "the secret must have at least")):
        done = _start(module, tmp_path, WHARF_INTERNAL_TOKEN_FILE=value)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"{SERVICES[module]}: ") and message in last, done.stderr


def test_a_gateway_configuration_error_is_one_line_and_nothing_after_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / "admission.yaml").write_text("policies: [{name: nope}]\n")
    done = _start("api", tmp_path, WHARF_ADMISSION_FILE=str(tmp_path / "admission.yaml"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wharf-gateway: wharf.admission: no extension named 'nope'"), lines
