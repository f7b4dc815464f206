"""WHARF_CONFIG: the same settings as the environment, from YAML; the environment wins; a typo
is reported by the runner's check; feature sections follow one rule."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from services.api.settings import GatewaySettings
from services.blobstore.settings import BlobStoreSettings
from services.common import config_file
from services.common.settings import SettingsError, check_all, load

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _file(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "wharf.yaml"
    path.write_text(text)
    return str(path)


def test_the_file_sets_what_the_environment_sets_and_the_environment_wins(tmp_path: pathlib.Path) -> None:
    path = _file(tmp_path, "port: 5050\nauth: token\naccess_log: false\ntrusted_proxies: [10.0.0.0/8, 192.168.0.1]\n"
                           "mirrors:\n  docker.io: {url: https://registry-1.docker.io}\n")
    settings = load(GatewaySettings, {"WHARF_CONFIG": path})
    assert (settings.port, settings.auth, settings.access_log) == (5050, "token", False)
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.0.1")
    assert load(GatewaySettings, {"WHARF_CONFIG": path, "WHARF_PORT": "6000"}).port == 6000


@pytest.mark.parametrize(("text", "message"), [
    ("port: [", "not valid YAML at line"),
    ("- port\n", "expected a mapping"),
    ("Port: 1\n", "'Port' is not a setting name"),
    ("port: {a: 1}\n", "port must be a string"),
    ("port: 99999\n", "WHARF_PORT='99999': expected a number from 1 to 65535"),
])
def test_a_bad_file_is_one_clear_line(tmp_path: pathlib.Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load(GatewaySettings, {"WHARF_CONFIG": _file(tmp_path, text)})


def test_a_missing_file_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=re.escape("WHARF_CONFIG='/nonexistent/w.yaml': cannot read it")):
        load(GatewaySettings, {"WHARF_CONFIG": "/nonexistent/w.yaml"})


def test_a_key_no_service_reads_is_reported(tmp_path: pathlib.Path) -> None:
    path = _file(tmp_path, "port: 5000\ns3_endpiont: minio:9000\n")
    assert check_all({"WHARF_CONFIG": path}, GatewaySettings, BlobStoreSettings) == [
        f"WHARF_CONFIG={path!r}: s3_endpiont is not a Wharf setting"]


def test_a_section_comes_from_its_own_file_or_from_the_config_file(tmp_path: pathlib.Path) -> None:
    path = _file(tmp_path, "events:\n  endpoints: [{url: http://a}]\n")
    assert config_file.section({"WHARF_CONFIG": path}, "events") == {"endpoints": [{"url": "http://a"}]}
    assert config_file.section({"WHARF_CONFIG": path}, "mirrors") is None
    own = tmp_path / "events.yaml"
    own.write_text("endpoints: [{url: http://b}]\n")
    assert config_file.section({"WHARF_CONFIG": path, "WHARF_EVENTS_FILE": str(own)}, "events") == {
        "endpoints": [{"url": "http://b"}]}


def test_the_example_file_is_valid(tmp_path: pathlib.Path) -> None:
    """The commented example in deploy/ passes the runner's check as it is."""
    env = {**os.environ, "WHARF_CONFIG": str(ROOT / "deploy" / "wharf.example.yaml"), "WHARF_DATA_DIR": str(tmp_path)}
    for var in [v for v in env if v.startswith("WHARF_") and v not in ("WHARF_CONFIG", "WHARF_DATA_DIR")]:
        del env[var]
    result = subprocess.run([sys.executable, "-m", "services.stack", "--check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
