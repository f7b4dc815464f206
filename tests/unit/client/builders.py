"""Test images made with the standard library: OCI layouts (one or several platforms) and `docker save` tarballs.

Layers hold fresh random bytes so no registry has seen them before. Each builder
returns every object it wrote by digest, so tests compare what comes back byte
for byte. The docker tarball mimics `docker save` (legacy layout: a directory
per layer with ``VERSION``, ``json`` and ``layer.tar``), written independently of
the client's own tarball writer so a round trip proves compatibility, not symmetry.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def layer_tar(size: int, seed: str = "") -> bytes:
    """An uncompressed tar holding one file of random bytes."""
    payload = os.urandom(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{seed}{hashlib.sha256(payload).hexdigest()[:12]}.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    return raw.getvalue()


def image_config(os_name: str, arch: str, layers: list[bytes]) -> bytes:
    return canonical({"architecture": arch, "os": os_name, "created": "2026-01-01T00:00:00Z",
                      "config": {"Cmd": ["/bin/sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]}})


@dataclasses.dataclass(frozen=True)
class Built:
    path: pathlib.Path
    digest: str                    # the root: index, or the only manifest
    objects: dict[str, bytes]      # every manifest, config and layer by digest
    platforms: dict[str, str]      # "os/arch" -> manifest digest

    @property
    def blob_count(self) -> int:
        """Configs and layers: the objects that are not manifests."""
        return len(self.objects) - len(self.platforms) - (1 if len(self.platforms) > 1 else 0)


def oci_layout(path: pathlib.Path, tag: str = "v1", platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
               layer_sizes: tuple[int, ...] = (20_000, 30_000)) -> Built:
    """An OCI layout whose ``tag`` names an index (several platforms) or a manifest (one)."""
    objects: dict[str, bytes] = {}
    descriptors = []
    for name in platforms:
        os_name, arch, *variant = name.split("/")
        tars = [layer_tar(size, arch) for size in layer_sizes]
        blobs = [gzip.compress(t, mtime=0) for t in tars]
        config = image_config(os_name, arch, tars)
        manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                              "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                              "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)}
                                         for b in blobs]})
        objects.update({sha256(b): b for b in [config, *blobs, manifest]})
        platform = {"architecture": arch, "os": os_name, **({"variant": variant[0]} if variant else {})}
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
                            "platform": platform, "name": name})
    names = [str(d.pop("name")) for d in descriptors]
    platforms_found = {name: str(d["digest"]) for name, d in zip(names, descriptors, strict=True)}
    if len(platforms) == 1:
        root = objects[descriptors[0]["digest"]]  # type: ignore[index]
        root_type = OCI_MANIFEST
    else:
        root = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
        root_type = OCI_INDEX
        objects[sha256(root)] = root
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in objects.items():
        (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": root_type, "digest": sha256(root), "size": len(root),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return Built(path, sha256(root), objects, platforms_found)


@dataclasses.dataclass(frozen=True)
class SavedImage:
    path: pathlib.Path
    repo_tag: str
    config: bytes
    layers: list[bytes]            # uncompressed layer tars, in order


def docker_save(path: pathlib.Path, repo_tag: str = "example/app:v1",
                layer_sizes: tuple[int, ...] = (30_000, 40_000)) -> SavedImage:
    """A tarball laid out as `docker save` writes it (legacy layout, uncompressed layers)."""
    tars = [layer_tar(size) for size in layer_sizes]
    config = image_config("linux", "amd64", tars)
    files: list[tuple[str, bytes]] = []
    layer_paths = []
    parent = ""
    for data in tars:
        layer_id = hashlib.sha256((parent + sha256(data)).encode()).hexdigest()
        files += [(f"{layer_id}/VERSION", b"1.0"), (f"{layer_id}/json", canonical({"id": layer_id})),
                  (f"{layer_id}/layer.tar", data)]
        layer_paths.append(f"{layer_id}/layer.tar")
        parent = layer_id
    config_name = sha256(config).split(":")[1] + ".json"
    files.append((config_name, config))
    files.append(("manifest.json", canonical([{"Config": config_name, "RepoTags": [repo_tag],
                                               "Layers": layer_paths}])))
    name, _, tag = repo_tag.rpartition(":")
    files.append(("repositories", canonical({name: {tag: parent}})))
    with tarfile.open(path, "w") as tar:
        for member, data in files:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return SavedImage(path, repo_tag, config, tars)


def read_docker_tarball(path: pathlib.Path) -> tuple[list[str], bytes, list[bytes]]:
    """(RepoTags, config bytes, layer tars) of a docker tarball, as `docker load` would read it."""
    with tarfile.open(path) as tar:
        def read(name: str) -> bytes:
            handle = tar.extractfile(name)
            assert handle is not None, name
            return handle.read()
        entry = json.loads(read("manifest.json"))[0]
        return list(entry["RepoTags"]), read(entry["Config"]), [read(layer) for layer in entry["Layers"]]
