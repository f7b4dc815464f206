"""The gateway serving HTTPS itself (WHARF_TLS_CERT_FILE / WHARF_TLS_KEY_FILE): skopeo pushes and
pulls with certificate verification on, blobs come back whole over TLS (no sendfile there), and
the token realm follows the scheme."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest
import requests

from tests.e2e.images import assert_same_objects, write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo, oci_layout_objects
from tests.support.stack import RunningStack
from tests.support.tls import certificate, tls_env
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("tls")
    certificate(directory)
    return directory


def test_skopeo_round_trip_with_verification(start_stack: Callable[..., RunningStack], tls_dir: pathlib.Path,
                                             tmp_path: pathlib.Path) -> None:
    stack = start_stack(env=tls_env(tls_dir))
    assert stack.url.startswith("https://")
    ca = str(tls_dir / "ca.crt")
    response = requests.get(f"{stack.url}/v2/", verify=ca, timeout=10)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{stack.host}/v2/", timeout=10)  # plain HTTP on the TLS port: no answer

    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")
    image = write_oci_index_layout(tmp_path / "source", tag="multi")
    reference = f"docker://{stack.host}/tls/image:{image.tag}"
    skopeo.run("copy", "--quiet", "--all", "--dest-cert-dir", str(tls_dir), f"oci:{image.path}:{image.tag}",
               reference)
    skopeo.run("copy", "--quiet", "--all", "--src-cert-dir", str(tls_dir), reference,
               f"oci:{tmp_path / 'copy'}:{image.tag}")
    assert_same_objects(oci_layout_objects(tmp_path / "copy"), image.objects)

    # A blob of several MiB comes back whole through the TLS socket (no sendfile there).
    data = os.urandom(5 * 1024 * 1024 + 3)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    pushed = requests.post(f"{stack.url}/v2/tls/blob/blobs/uploads/?digest={digest}", data=data, verify=ca,
                           headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert pushed.status_code == 201, pushed.text
    pulled = requests.get(f"{stack.url}/v2/tls/blob/blobs/{digest}", verify=ca, timeout=60)
    assert pulled.status_code == 200 and pulled.content == data


def test_the_token_realm_follows_the_scheme(start_stack: Callable[..., RunningStack], tls_dir: pathlib.Path) -> None:
    stack = start_stack(env={**tls_env(tls_dir), "WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": "tls-admin-secret",
                             "WHARF_BCRYPT_ROUNDS": "4"})
    response = requests.get(f"{stack.url}/v2/", verify=str(tls_dir / "ca.crt"), timeout=10)
    assert response.status_code == 401
    assert f'realm="https://{stack.host}/token"' in response.headers["WWW-Authenticate"]


def test_a_key_without_a_certificate_is_refused(tmp_path: pathlib.Path, tls_dir: pathlib.Path) -> None:
    key = tls_env(tls_dir)["WHARF_TLS_KEY_FILE"]
    env = {"WHARF_TLS_KEY_FILE": key, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run([sys.executable, "-m", "services.api"], env=env, cwd=pathlib.Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "go together" in result.stderr
