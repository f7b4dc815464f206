"""``wharf mirror-config``: the snippet that points docker, containerd, podman or Kubernetes nodes at a Wharf mirror.

Nothing is contacted: the command prints configuration. The snippet alone goes to stdout, so it
can be redirected into its file; where it goes and what to know about it go to stderr.

Three names matter (README, "Mirroring other registries"): the registry the images are named
after (``docker.io``), the Wharf prefix its upstream sits behind (``--prefix``, usually the same),
and the host that upstream's API lives on (``--upstream-host``: ``registry-1.docker.io`` for
Docker Hub, else the registry name itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

from wharf_client.cli.context import Context, UsageError
from wharf_client.errors import InvalidReference
from wharf_client.reference import DEFAULT_REGISTRY, DOCKER_HUB_API_HOST, validate_repository

CLIENTS = ("docker", "containerd", "podman", "kubernetes")
CONTAINERD_HOSTS_DIR = "/etc/containerd/certs.d"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_PORT_RE = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?$")


def host_port(text: str) -> str:
    """A registry address as ``host[:port]``: no scheme, no path, no whitespace."""
    if not text:
        raise argparse.ArgumentTypeError("empty: give HOST[:PORT], e.g. wharf.example:5000")
    if any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} contains whitespace: give HOST[:PORT]")
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text!r} has a scheme: give HOST[:PORT] only "
                                         "(add --insecure for a mirror on plain HTTP)")
    if "/" in text:
        raise argparse.ArgumentTypeError(f"{text!r} has a path: give HOST[:PORT] only "
                                         "(the upstream's Wharf prefix goes in --prefix)")
    match = _HOST_PORT_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST[:PORT]")
    if match.group(1) is not None and not 0 < int(match.group(1)) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be between 1 and 65535")
    return text


def wharf_prefix(text: str) -> str:
    """A Wharf mirror prefix: a repository-name prefix such as ``docker.io`` or ``ghcr.io``."""
    try:
        return validate_repository(text)
    except InvalidReference:
        raise argparse.ArgumentTypeError(f"{text!r} is not a repository-name prefix "
                                         "(lower-case components, like docker.io or ghcr.io)") from None


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    # Not the common options: nothing here talks to a registry, and --insecure means the mirror.
    mirror = commands.add_parser(
        "mirror-config", help="print the configuration that makes docker, containerd, podman or Kubernetes "
                              "nodes pull through a Wharf mirror",
        description="Print the snippet (stdout) and where it goes (stderr) that makes a container runtime "
                    "pull through the Wharf mirror at REGISTRY. Nothing is contacted.")
    mirror.add_argument("registry", type=host_port, metavar="REGISTRY",
                        help="the Wharf gateway as the machine reaches it: HOST[:PORT], e.g. wharf.example:5000")
    mirror.add_argument("--client", required=True, choices=CLIENTS,
                        help="what pulls: docker (daemon.json), containerd (hosts.toml), podman "
                             "(registries.conf) or kubernetes (its nodes' containerd)")
    mirror.add_argument("--prefix", type=wharf_prefix, default=DEFAULT_REGISTRY,
                        help="the Wharf prefix the upstream is mirrored under (default docker.io)")
    mirror.add_argument("--upstream-host", type=host_port, metavar="HOST[:PORT]",
                        help="the upstream's API host, containerd's fallback (default: registry-1.docker.io "
                             "for docker.io, else the prefix)")
    mirror.add_argument("--insecure", action="store_true",
                        help="the mirror speaks plain HTTP (or TLS with a certificate the machine does not trust)")
    mirror.add_argument("--json", action="store_true", help="print client, path, content and notes as JSON")
    mirror.add_argument("-q", "--quiet", action="store_true", help="print the snippet only, no notes")
    # What Context.from_args reads of the common options, none of which applies here.
    mirror.set_defaults(run=run_mirror_config, plain_http=False, plain_http_registry=[], insecure_registry=[],
                        docker_config=None, verbose=False)


@dataclasses.dataclass(frozen=True)
class Snippet:
    """What to write (``content``), where (``path``), and what to know about it (``notes``)."""

    client: str
    path: str
    content: str
    notes: list[str]


def _is_registry_name(prefix: str) -> bool:
    """Whether the prefix is itself a registry's name (docker.io, ghcr.io), as Wharf's are by convention."""
    return "/" not in prefix and ("." in prefix or prefix == "localhost")


def upstream_names(prefix: str, upstream_host: str | None) -> tuple[str, str]:
    """The registry the images are named after, and the host its API lives on."""
    if upstream_host is None:
        if not _is_registry_name(prefix):
            raise UsageError(f"--prefix {prefix} does not name a registry: say which one it mirrors with "
                             "--upstream-host (e.g. registry-1.docker.io)")
        return prefix, DOCKER_HUB_API_HOST if prefix == DEFAULT_REGISTRY else prefix
    if _is_registry_name(prefix):
        return prefix, upstream_host
    hub = upstream_host in (DOCKER_HUB_API_HOST, "index.docker.io", DEFAULT_REGISTRY)
    return (DEFAULT_REGISTRY if hub else upstream_host), upstream_host


def docker(registry: str, name: str, prefix: str, insecure: bool) -> Snippet:
    if name != DEFAULT_REGISTRY:
        raise UsageError(f"docker's registry-mirrors mirror Docker Hub only, not {name}: use --client "
                         f"containerd or podman, or pull {registry}/{prefix}/... by name")
    config: dict[str, list[str]] = {"registry-mirrors": [f"{'http' if insecure else 'https'}://{registry}"]}
    if insecure:
        config["insecure-registries"] = [registry]
    path = "/etc/docker/daemon.json"
    return Snippet("docker", path, json.dumps(config, indent=2), [
        f"merge this into {path} (rootless: ~/.config/docker/daemon.json), then restart dockerd",
        "docker mirrors Docker Hub only, and asks the mirror for names without a prefix (library/alpine, not "
        "docker.io/library/alpine): the Wharf upstream for Docker Hub must be the one marked `default: true`",
    ])


def containerd(registry: str, name: str, upstream_host: str, prefix: str, insecure: bool,
               client: str = "containerd") -> Snippet:
    path = f"{CONTAINERD_HOSTS_DIR}/{name}/hosts.toml"
    host = f"{'http' if insecure else 'https'}://{registry}/v2/{prefix}"
    content = "\n".join([
        f"# {path}",
        f'server = "https://{upstream_host}"',
        "",
        f'[host."{host}"]',
        '  capabilities = ["pull", "resolve"]',
        "  override_path = true",
    ])
    notes = [f"write this to {path}; containerd reads it when its CRI registry config_path includes "
             f"{CONTAINERD_HOSTS_DIR} (set it in /etc/containerd/config.toml if not); no restart is needed"]
    if insecure:
        notes.append("plain HTTP to the mirror; for HTTPS with a certificate containerd does not trust, keep "
                     'https:// and add skip_verify = true (or ca = "/path/to/ca.crt") under the host')
    return Snippet(client, path, content, notes)


def podman(registry: str, name: str, prefix: str, insecure: bool) -> Snippet:
    path = "/etc/containers/registries.conf"
    lines = [f"# {path}", "[[registry]]", f'prefix = "{name}"', f'location = "{registry}/{prefix}"']
    if insecure:
        lines.append("insecure = true")
    return Snippet("podman", path, "\n".join(lines), [
        f"append this to {path} or save it as a file in /etc/containers/registries.conf.d/ "
        "(rootless: ~/.config/containers/registries.conf)",
        f"pushes of {name}/... go to the mirror too, which refuses them under a mirrored prefix",
    ])


def kubernetes(registry: str, name: str, upstream_host: str, prefix: str, insecure: bool) -> Snippet:
    snippet = containerd(registry, name, upstream_host, prefix, insecure, client="kubernetes")
    scheme = "http" if insecure else "https"
    return dataclasses.replace(snippet, notes=[
        *snippet.notes,
        f"Kubernetes nodes pull with containerd: put {snippet.path} on every node, in the node image "
        "(or cloud-init), or from a privileged DaemonSet that writes it to the host's "
        f"{CONTAINERD_HOSTS_DIR}",
        f"containerd resolves {registry} on the node, not in cluster DNS: give an address the nodes reach "
        "(NodePort, LoadBalancer, Ingress), not a Service name",
        f"kind: mount the directory with extraMounts and set config_path in containerdConfigPatches; "
        f"k3s: in /etc/rancher/k3s/registries.yaml, mirrors: {name}: endpoint: [\"{scheme}://{registry}\"], "
        f"rewrite: {{\"^(.*)$\": \"{prefix}/$1\"}}",
    ])


def snippet(client: str, registry: str, prefix: str, upstream_host: str | None, insecure: bool) -> Snippet:
    """The configuration for ``client`` to pull ``prefix``'s upstream through the mirror at ``registry``."""
    name, api_host = upstream_names(prefix, upstream_host)
    if client == "docker":
        return docker(registry, name, prefix, insecure)
    if client == "containerd":
        return containerd(registry, name, api_host, prefix, insecure)
    if client == "podman":
        return podman(registry, name, prefix, insecure)
    if client == "kubernetes":
        return kubernetes(registry, name, api_host, prefix, insecure)
    raise UsageError(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")


def run_mirror_config(ctx: Context) -> int:
    args = ctx.args
    result = snippet(args.client, args.registry, args.prefix, args.upstream_host, args.insecure)
    if ctx.json:
        ctx.emit(dataclasses.asdict(result))
        return 0
    print(result.content)  # even with --quiet: the snippet is the result
    for note in result.notes:
        ctx.info(f"note: {note}")
    return 0
