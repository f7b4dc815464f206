"""What the image page shows, read from a manifest and its config: platforms of an index; layers,
config, history and the layer-size picture of an image; the referrers tree. Nothing here is
trusted: every value is pushed content, shown as text (the templates escape it)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from services.common import mediatypes
from services.common.errors import RegistryError

if TYPE_CHECKING:
    from services.api.context import Context

INDEX_TYPES = {mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST}
# The largest config read to be shown (a config is a few kilobytes; refuse to hold more).
_CONFIG_MAX = 1 << 20
# Bounds on what one page walks: platforms of an index, referrers levels and entries.
_MAX_PLATFORMS = 64
_REFERRER_DEPTH = 3
_REFERRERS_MAX = 100


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str
    media_type: str
    size: int
    percent: int  # its share of the largest layer, for the bar (0-100)


@dataclasses.dataclass(frozen=True)
class Referrer:
    digest: str
    artifact_type: str
    media_type: str
    size: int
    annotations: list[tuple[str, str]]
    children: list[Referrer]


def parse(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def pretty(content: bytes) -> str:
    try:
        return json.dumps(json.loads(content), indent=2, sort_keys=False, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        return content.decode("utf-8", errors="replace")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def platform_text(platform: Any) -> str:
    p = _dict(platform)
    parts = [str(p.get("os", "")), str(p.get("architecture", ""))]
    if p.get("variant"):
        parts.append(str(p["variant"]))
    return "/".join(x for x in parts if x) or "unknown"


def platforms(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of an index: platform, digest, media type, size."""
    return [{"platform": platform_text(d.get("platform")), "digest": str(d.get("digest", "")),
             "media_type": str(d.get("mediaType", "")), "size": _int(d.get("size")),
             "artifact_type": str(d.get("artifactType", ""))}
            for d in (_dict(x) for x in _list(manifest.get("manifests"))[:_MAX_PLATFORMS])]


def layers(manifest: dict[str, Any]) -> list[Layer]:
    found = [_dict(x) for x in _list(manifest.get("layers"))]
    largest = max((_int(d.get("size")) for d in found), default=0) or 1
    return [Layer(str(d.get("digest", "")), str(d.get("mediaType", "")), _int(d.get("size")),
                  max(1, round(100 * _int(d.get("size")) / largest))) for d in found]


def image_size(manifest: dict[str, Any]) -> int:
    config = _dict(manifest.get("config"))
    return _int(config.get("size")) + sum(layer.size for layer in layers(manifest))


def read_config(ctx: Context, name: str, manifest: dict[str, Any]) -> bytes:
    """The config blob's bytes (b"" when there is none, it is not in the repository, or too big)."""
    digest = str(_dict(manifest.get("config")).get("digest", ""))
    if not digest:
        return b""
    try:
        size = ctx.clients.cache.blob_size(name, digest)
        if size > _CONFIG_MAX:
            return b""
        first, rest, cancel = ctx.clients.blobs.read(digest, 0, size)
    except RegistryError:
        return b""
    data = bytearray(first)
    try:
        for chunk in rest:
            data.extend(chunk)
            if len(data) > _CONFIG_MAX:
                return b""
    finally:
        cancel()
    return bytes(data)


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """Entrypoint, command, env, labels, exposed ports, working directory, user; and the history."""
    inner = _dict(config.get("config"))
    history = [{"created": str(h.get("created", "")), "created_by": str(h.get("created_by", "")),
                "comment": str(h.get("comment", "")), "empty_layer": bool(h.get("empty_layer"))}
               for h in (_dict(x) for x in _list(config.get("history"))[:1000])]
    return {
        "platform": platform_text(config),
        "created": str(config.get("created", "")),
        "entrypoint": [str(x) for x in _list(inner.get("Entrypoint"))],
        "cmd": [str(x) for x in _list(inner.get("Cmd"))],
        "env": [str(x) for x in _list(inner.get("Env"))],
        "labels": sorted((str(k), str(v)) for k, v in _dict(inner.get("Labels")).items()),
        "ports": sorted(str(k) for k in _dict(inner.get("ExposedPorts"))),
        "workdir": str(inner.get("WorkingDir", "")),
        "user": str(inner.get("User", "")),
        "history": history,
    }


def referrers(ctx: Context, name: str, digest: str, depth: int = 0, budget: list[int] | None = None) -> list[Referrer]:
    """The referrers of a manifest, and theirs (a signature of an SBOM), to a bounded depth and count."""
    budget = budget if budget is not None else [_REFERRERS_MAX]
    if depth >= _REFERRER_DEPTH or budget[0] <= 0:
        return []
    found: list[Referrer] = []
    for d in ctx.clients.metadata.list_referrers(name, digest, "")[0]:  # the first page: the budget is smaller
        if budget[0] <= 0:
            break
        budget[0] -= 1
        found.append(Referrer(d.digest, d.artifact_type, d.media_type, d.size, sorted(dict(d.annotations).items()),
                              referrers(ctx, name, d.digest, depth + 1, budget)))
    return found
