"""Moving an image from a source to a target: every platform, or the ones asked for.

One algorithm serves push, pull and copy. It reads the root manifest, walks an
index down to the image manifests (keeping only the requested platforms), moves
every distinct blob with bounded concurrency (each blob: skip if present, mount,
or stream), then writes manifests bottom-up, so a registry never sees a manifest
whose blobs or children it lacks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Sequence
from typing import Protocol

from wharf_client.errors import FormatError
from wharf_client.manifest import Descriptor, Manifest, index
from wharf_client.platform import Platform
from wharf_client.stores import ImageSource, ImageTarget
from wharf_client.upload import Outcome

# Indexes of indexes exist (attestations, nested lists); deeper than this is refused rather than followed.
MAX_DEPTH = 4


class CopyProgress(Protocol):
    """Callbacks for progress display; called from worker threads."""

    def blob_started(self, descriptor: Descriptor) -> None: ...
    def blob_advanced(self, descriptor: Descriptor, done: int) -> None: ...
    def blob_finished(self, descriptor: Descriptor, outcome: Outcome) -> None: ...


class NoProgress:
    def blob_started(self, descriptor: Descriptor) -> None:
        pass

    def blob_advanced(self, descriptor: Descriptor, done: int) -> None:
        pass

    def blob_finished(self, descriptor: Descriptor, outcome: Outcome) -> None:
        pass


@dataclasses.dataclass
class CopyResult:
    """What a copy did: the root written, and per-outcome blob counts and bytes."""

    digest: str
    media_type: str
    manifests: list[str] = dataclasses.field(default_factory=list)
    blobs: dict[str, int] = dataclasses.field(default_factory=dict)
    bytes_moved: int = 0
    platforms: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Plan:
    root: Manifest
    manifests: list[Manifest]  # bottom-up: children before parents, root last
    blobs: dict[str, Descriptor]
    platforms: list[str]


def _plan(source: ImageSource, platforms: Sequence[Platform] | None) -> _Plan:
    root = source.root()
    ordered: list[Manifest] = []
    blobs: dict[str, Descriptor] = {}
    chosen: list[str] = []
    if root.is_index and platforms and len(platforms) == 1:
        picked = root.select(platforms[0])
        chosen.append(str(picked.platform))
        root = source.manifest(picked)

    def visit(manifest: Manifest, depth: int, is_root: bool) -> Manifest:
        if depth > MAX_DEPTH:
            raise FormatError(f"index nesting deeper than {MAX_DEPTH} at {manifest.digest}")
        if manifest.is_index:
            kept: list[Descriptor] = []
            for child in manifest.children:
                if platforms and child.platform and not any(p.matches(child.platform) for p in platforms):
                    continue
                if not child.is_manifest:
                    continue
                visit(source.manifest(child), depth + 1, False)
                kept.append(child)
                if child.platform:
                    chosen.append(str(child.platform))
            if platforms and is_root and len(kept) != len(manifest.children):
                if not kept:
                    raise FormatError(f"no manifest in {manifest.digest} matches "
                                      f"{', '.join(str(p) for p in platforms)}")
                # A subset of an index is a new index: the original digest cannot be kept.
                manifest = index(kept, media_type=manifest.media_type, annotations=manifest.annotations)
        else:
            for blob in manifest.blobs:
                if blob.distributable:
                    blobs.setdefault(blob.digest, blob)
        ordered.append(manifest)
        return manifest

    new_root = visit(root, 0, True)
    return _Plan(new_root, ordered, blobs, chosen)


def copy_image(source: ImageSource, target: ImageTarget, tag: str | None, *,
               platforms: Sequence[Platform] | None = None, concurrency: int = 4,
               progress: CopyProgress | None = None) -> CopyResult:
    """Copies the image ``source`` names into ``target``, listed under ``tag`` (or by digest when None)."""
    watcher = progress or NoProgress()
    plan = _plan(source, platforms)
    result = CopyResult(plan.root.digest, plan.root.media_type, platforms=plan.platforms)
    lock = threading.Lock()

    def move(descriptor: Descriptor) -> None:
        watcher.blob_started(descriptor)
        outcome = target.put_blob(source.blob(descriptor), lambda done: watcher.blob_advanced(descriptor, done))
        watcher.blob_finished(descriptor, outcome)
        with lock:
            result.blobs[outcome.value] = result.blobs.get(outcome.value, 0) + 1
            if outcome is Outcome.UPLOADED:
                result.bytes_moved += descriptor.size

    # Largest first: the long transfers start early and the small ones fill the gaps.
    pending = sorted(plan.blobs.values(), key=lambda d: d.size, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="wharf-blob") as pool:
        futures = [pool.submit(move, blob) for blob in pending]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    for manifest in plan.manifests:
        is_root = manifest is plan.root
        if not is_root and target.has_manifest(manifest.descriptor()):
            continue
        target.put_manifest(manifest, tag if is_root else None, is_root)
        result.manifests.append(manifest.digest)
    return result
