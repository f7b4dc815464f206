"""What the image page shows, read from a manifest and its config: platforms of an index; layers,
config, history and the layer-size picture of an image; the referrers tree. Nothing here is
trusted: every value is pushed content, shown as text (the templates escape it)."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from typing import TYPE_CHECKING, Any

from services.common import mediatypes
from services.common.errors import RegistryError

if TYPE_CHECKING:
    from services.api.context import Context
    from services.api.read_cache import Manifest

INDEX_TYPES = {mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST}
# The largest config read to be shown (a config is a few kilobytes; refuse to hold more).
_CONFIG_MAX = 1 << 20
# Bounds on what one page walks: platforms of an index, referrers levels and entries.
_MAX_PLATFORMS = 64
_REFERRER_DEPTH = 3
_REFERRERS_MAX = 100
# What the tree shows of a referrer's annotations (its own page shows them all): 66 referrers
# carrying 3.5 MB of annotations each made one view of their subject ~1.6 GB of a worker's memory.
_ANNOTATIONS_SHOWN = 16
_ANNOTATION_TEXT = 256
# Tag rows summarized per worker (a few hundred bytes each), and the manifest bytes one
# repository page may read to summarize rows it has not seen before: 100 tags of a 4 MiB manifest
# cost ~5.5 s of a gateway worker's CPU (and 400 MB over gRPC) per view before.
_SUMMARIES_MAX = 4096
ROWS_READ_BUDGET = 4 << 20


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
    annotations: list[tuple[str, str]]  # the first _ANNOTATIONS_SHOWN, each cut to _ANNOTATION_TEXT
    children: list[Referrer]
    more_annotations: int = 0  # not shown


def parse(content: bytes) -> dict[str, Any]:
    # RecursionError: a config blob is any bytes its pusher chose (only manifests are checked at
    # push), and JSON nested a thousand deep made its page a 500 with a traceback per view.
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def pretty(content: bytes) -> str:
    try:
        return json.dumps(json.loads(content), indent=2, sort_keys=False, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return content.decode("utf-8", errors="replace")


def text(value: Any) -> str:
    """A pushed value as text; one nested too deeply to print (a list in a list ... in an
    ``Entrypoint``, which ``json.loads`` took from a shallower stack) is said to be so."""
    try:
        return str(value)
    except RecursionError:
        return "(nested too deeply to show)"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def platform_text(platform: Any) -> str:
    p = _dict(platform)
    parts = [text(p.get("os", "")), text(p.get("architecture", ""))]
    if p.get("variant"):
        parts.append(text(p["variant"]))
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


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a repository page's row shows of a manifest: its size (an index: its entries') and platforms."""

    digest: str
    media_type: str
    size: int
    platforms: tuple[str, ...]


def summarize(manifest: Manifest) -> Summary:
    parsed = parse(manifest.content)
    if manifest.media_type in INDEX_TYPES or "manifests" in parsed:
        entries = platforms(parsed)
        return Summary(manifest.digest, manifest.media_type, sum(e["size"] for e in entries),
                       tuple(e["platform"] for e in entries if e["platform"] != "unknown/unknown"))
    return Summary(manifest.digest, manifest.media_type, image_size(parsed), ())


class Summaries:
    """Row summaries by (repository, digest), least recently used out first. A digest names its
    bytes for good, so a summary never goes stale; one worker-wide memo is always right."""

    def __init__(self, limit: int = _SUMMARIES_MAX) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._found: collections.OrderedDict[tuple[str, str], Summary] = collections.OrderedDict()

    def get(self, repository: str, digest: str) -> Summary | None:
        with self._lock:
            found = self._found.get((repository, digest))
            if found is not None:
                self._found.move_to_end((repository, digest))
            return found

    def put(self, repository: str, summary: Summary) -> None:
        with self._lock:
            self._found[(repository, summary.digest)] = summary
            self._found.move_to_end((repository, summary.digest))
            while len(self._found) > self._limit:
                self._found.popitem(last=False)


SUMMARIES = Summaries()


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
    history = [{"created": text(h.get("created", "")), "created_by": text(h.get("created_by", "")),
                "comment": text(h.get("comment", "")), "empty_layer": bool(h.get("empty_layer"))}
               for h in (_dict(x) for x in _list(config.get("history"))[:1000])]
    return {
        "platform": platform_text(config),
        "created": text(config.get("created", "")),
        "entrypoint": [text(x) for x in _list(inner.get("Entrypoint"))],
        "cmd": [text(x) for x in _list(inner.get("Cmd"))],
        "env": [text(x) for x in _list(inner.get("Env"))],
        "labels": sorted((str(k), text(v)) for k, v in _dict(inner.get("Labels")).items()),
        "ports": sorted(str(k) for k in _dict(inner.get("ExposedPorts"))),
        "workdir": text(inner.get("WorkingDir", "")),
        "user": text(inner.get("User", "")),
        "history": history,
    }


def _cut(value: str) -> str:
    return value if len(value) <= _ANNOTATION_TEXT else value[:_ANNOTATION_TEXT] + "…"


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
        keys = sorted(d.annotations)
        shown = [(_cut(k), _cut(d.annotations[k])) for k in keys[:_ANNOTATIONS_SHOWN]]
        found.append(Referrer(d.digest, d.artifact_type, d.media_type, d.size, shown,
                              referrers(ctx, name, d.digest, depth + 1, budget),
                              max(0, len(keys) - _ANNOTATIONS_SHOWN)))
    return found
