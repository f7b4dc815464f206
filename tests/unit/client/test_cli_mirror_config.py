"""``wharf mirror-config``: the snippet on stdout parses as its file's format and says what the README says."""

from __future__ import annotations

import json
import tomllib

import pytest
from wharf_client.cli import run
from wharf_client.cli.context import EXIT_USAGE

MIRROR = "wharf.example:5000"


def config(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert run(["mirror-config", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(run(["mirror-config", *argv]))
    assert exited.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    return captured.err


def test_docker_gets_a_registry_mirror_and_the_default_upstream_note(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = config(capsys, MIRROR, "--client", "docker")
    assert json.loads(out) == {"registry-mirrors": ["https://wharf.example:5000"]}
    assert "default: true" in err and "Docker Hub only" in err and "/etc/docker/daemon.json" in err


def test_docker_insecure_is_http_and_an_insecure_registry(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = config(capsys, "127.0.0.1:5000", "--client", "docker", "--insecure")
    assert json.loads(out) == {"registry-mirrors": ["http://127.0.0.1:5000"],
                               "insecure-registries": ["127.0.0.1:5000"]}


def test_docker_mirrors_docker_hub_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["mirror-config", MIRROR, "--client", "docker", "--prefix", "ghcr.io"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and "Docker Hub only" in captured.err


def test_containerd_hosts_toml(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = config(capsys, MIRROR, "--client", "containerd")
    assert out.startswith("# /etc/containerd/certs.d/docker.io/hosts.toml\n")
    assert tomllib.loads(out) == {
        "server": "https://registry-1.docker.io",
        "host": {"https://wharf.example:5000/v2/docker.io": {"capabilities": ["pull", "resolve"],
                                                             "override_path": True}}}
    assert "/etc/containerd/certs.d/docker.io/hosts.toml" in err and "config_path" in err


def test_containerd_insecure_speaks_http_to_the_mirror(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = config(capsys, MIRROR, "--client", "containerd", "--insecure")
    assert list(tomllib.loads(out)["host"]) == ["http://wharf.example:5000/v2/docker.io"]
    assert tomllib.loads(out)["server"] == "https://registry-1.docker.io"
    assert "skip_verify" in err


def test_another_prefix_is_its_own_upstream_host(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = config(capsys, MIRROR, "--client", "containerd", "--prefix", "ghcr.io")
    assert out.startswith("# /etc/containerd/certs.d/ghcr.io/hosts.toml\n")
    assert tomllib.loads(out) == {
        "server": "https://ghcr.io",
        "host": {"https://wharf.example:5000/v2/ghcr.io": {"capabilities": ["pull", "resolve"],
                                                           "override_path": True}}}


def test_an_upstream_host_given(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = config(capsys, MIRROR, "--client", "containerd", "--upstream-host", "mirror.gcr.io")
    assert tomllib.loads(out)["server"] == "https://mirror.gcr.io"
    assert "/v2/docker.io" in out and "certs.d/docker.io/" in out
    # A prefix that is no registry name: the images are named after the upstream.
    out, _ = config(capsys, MIRROR, "--client", "podman", "--prefix", "hub", "--upstream-host", "registry-1.docker.io")
    assert tomllib.loads(out) == {"registry": [{"prefix": "docker.io", "location": "wharf.example:5000/hub"}]}
    assert "--upstream-host" in usage_error(capsys, MIRROR, "--client", "containerd", "--prefix", "hub")


def test_podman_registries_conf(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = config(capsys, MIRROR, "--client", "podman")
    assert tomllib.loads(out) == {"registry": [{"prefix": "docker.io", "location": "wharf.example:5000/docker.io"}]}
    assert "/etc/containers/registries.conf" in err
    out, _ = config(capsys, MIRROR, "--client", "podman", "--prefix", "ghcr.io", "--insecure")
    assert tomllib.loads(out) == {"registry": [{"prefix": "ghcr.io", "location": "wharf.example:5000/ghcr.io",
                                                "insecure": True}]}


def test_kubernetes_is_containerd_on_every_node(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = config(capsys, MIRROR, "--client", "kubernetes")
    assert out == config(capsys, MIRROR, "--client", "containerd")[0]
    assert "DaemonSet" in err and "kind" in err and "k3s" in err
    out, _ = config(capsys, MIRROR, "--client", "kubernetes", "--prefix", "ghcr.io", "--insecure")
    assert list(tomllib.loads(out)["host"]) == ["http://wharf.example:5000/v2/ghcr.io"]


def test_quiet_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = config(capsys, MIRROR, "--client", "podman", "-q")
    assert err == "" and "[[registry]]" in out
    out, err = config(capsys, MIRROR, "--client", "containerd", "--json")
    payload = json.loads(out)
    assert err == "" and payload["path"] == "/etc/containerd/certs.d/docker.io/hosts.toml"
    assert tomllib.loads(payload["content"])["server"] == "https://registry-1.docker.io" and payload["notes"]


@pytest.mark.parametrize(("registry", "reason"), [
    ("https://wharf.example:5000", "scheme"), ("wharf.example:5000/v2", "path"), ("wharf example", "whitespace"),
    ("", "empty"), ("wharf.example:99999", "port"), ("wharf_example", "HOST[:PORT]"), ("wharf.example:", "HOST[:PORT]"),
])
def test_a_bad_registry_is_a_usage_error(registry: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, registry, "--client", "docker")
    assert err.startswith("usage: wharf mirror-config") and "argument REGISTRY" in err and reason in err


def test_a_bad_prefix_or_client_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--prefix" in usage_error(capsys, MIRROR, "--client", "podman", "--prefix", "Docker.IO/")
    assert "--client" in usage_error(capsys, MIRROR, "--client", "cri-o")
    assert "--client" in usage_error(capsys, MIRROR)
