"""cosign (sigstore, Go) signs and attests images in Wharf and verifies them, offline (no
transparency log): signatures stored the classic way (a `sha256-<digest>.sig` tag) and the OCI 1.1
way (a referrer of the image, found through the referrers API)."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import requests

from tests.support.pusher import push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.tools import isolated_env, require_tool

pytestmark = pytest.mark.e2e

COSIGN_MODULE = "github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5"
OFFLINE = ["--allow-insecure-registry"]


class Cosign:
    def __init__(self, binary: str, home: pathlib.Path) -> None:
        self.binary = binary
        self.home = home
        self.env = isolated_env(home, "COSIGN_", "SIGSTORE_")
        self.env.update(COSIGN_PASSWORD="test-only-password", COSIGN_EXPERIMENTAL="1")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], cwd=self.home, env=self.env, capture_output=True, text=True,
                                timeout=180)
        if check:
            assert result.returncode == 0, f"cosign {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def key_pair(self, name: str) -> tuple[str, str]:
        directory = self.home / name
        directory.mkdir()
        subprocess.run([self.binary, "generate-key-pair"], cwd=directory, env=self.env, capture_output=True,
                       check=True, timeout=60)
        return str(directory / "cosign.key"), str(directory / "cosign.pub")


@pytest.fixture()
def cosign(tmp_path: pathlib.Path) -> Cosign:
    return Cosign(require_tool("cosign", f"go install {COSIGN_MODULE}"), tmp_path / "cosign-home")


def _image(stack: RunningStack, repository: str) -> str:
    digest = push_image([stack.url], repository, "v1", random_layers(1, 2048))
    return f"{stack.host}/{repository}@{digest}"


def test_sign_and_verify_with_a_signature_tag(cosign: Cosign, stack: RunningStack) -> None:
    key, pub = cosign.key_pair("keys")
    image = _image(stack, "cosign/tagged")
    cosign.run("sign", "--yes", "--key", key, "--tlog-upload=false", *OFFLINE, image)
    verified = cosign.run("verify", "--key", pub, "--insecure-ignore-tlog=true", *OFFLINE, image)
    [claim] = json.loads(verified.stdout)
    assert claim["critical"]["image"]["docker-manifest-digest"] == image.rsplit("@", 1)[1]
    repository, digest = image.split("/", 1)[1].split("@")
    tags = requests.get(f"{stack.url}/v2/{repository}/tags/list", timeout=10).json()["tags"]
    assert f"{digest.replace(':', '-')}.sig" in tags
    _, other = cosign.key_pair("other")
    assert cosign.run("verify", "--key", other, "--insecure-ignore-tlog=true", *OFFLINE, image,
                      check=False).returncode != 0


def test_sign_attest_and_verify_as_referrers(cosign: Cosign, stack: RunningStack) -> None:
    key, pub = cosign.key_pair("keys")
    image = _image(stack, "cosign/referrers")
    repository, digest = image.split("/", 1)[1].split("@")
    cosign.run("sign", "--yes", "--key", key, "--tlog-upload=false", "--registry-referrers-mode=oci-1-1", *OFFLINE,
               image)
    cosign.run("verify", "--key", pub, "--insecure-ignore-tlog=true", "--experimental-oci11", *OFFLINE, image)
    index = requests.get(f"{stack.url}/v2/{repository}/referrers/{digest}", timeout=10).json()
    assert [m["artifactType"] for m in index["manifests"]] == ["application/vnd.dev.cosign.artifact.sig.v1+json"]

    predicate = cosign.home / "predicate.json"
    predicate.write_text(json.dumps({"builder": "wharf-tests"}))
    cosign.run("attest", "--yes", "--key", key, "--tlog-upload=false", "--predicate", str(predicate),
               "--type", "custom", *OFFLINE, image)
    attested = cosign.run("verify-attestation", "--key", pub, "--insecure-ignore-tlog=true", "--type", "custom",
                          *OFFLINE, image)
    assert "wharf-tests" in attested.stdout or "payload" in attested.stdout
