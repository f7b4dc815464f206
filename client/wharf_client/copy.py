"""Moving an image from a source to a target: every platform, or the ones asked for.

One algorithm serves push, pull and copy. It reads the root manifest, walks an
index down to the image manifests (keeping only the requested platforms), moves
every distinct blob with bounded concurrency (each blob: skip if present, mount,
or stream), then writes manifests bottom-up, so a registry never sees a manifest
whose blobs or children it lacks.

With ``referrers`` it also copies what refers to the image (signatures, SBOMs,
attestations): the manifests whose ``subject`` is one it copied, then theirs, and
so on. They are all found before anything is written, their blobs move in the
same pool as the image's, and each is written after its subject.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from wharf_client.errors import FormatError, UnsupportedOperation
from wharf_client.manifest import Descriptor, Manifest, index
from wharf_client.platform import Platform
from wharf_client.stores import ImageSource, ImageTarget, ReferrerSource, ReferrerTarget
from wharf_client.upload import Outcome

# Indexes of indexes exist (attestations, nested lists); deeper than this is refused rather than followed.
MAX_DEPTH = 4
# A registry that keeps listing referrers (or a chain that never ends) cannot keep a copy going forever.
MAX_REFERRERS = 10_000
# One image's tree: indexes may repeat an entry, which is fetched once, but the entries read are
# counted, so an index listing itself thousands of times over several levels ends in an error.
MAX_MANIFESTS = 10_000
MAX_DESCRIPTORS = 100_000


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
    referrers: list[str] = dataclasses.field(default_factory=list)  # referrer manifests written, in order

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Plan:
    root: Manifest
    manifests: list[Manifest]  # bottom-up: children before parents, root last
    blobs: dict[str, Descriptor]
    platforms: list[str]
    rewritten: bool = False  # the root is a new index (a platform subset), not the source's manifest


def _plan(source: ImageSource, root: Manifest, platforms: Sequence[Platform] | None) -> _Plan:
    ordered: list[Manifest] = []
    blobs: dict[str, Descriptor] = {}
    chosen: list[str] = []
    rewritten = False
    visited: set[str] = set()  # digests of the manifests already walked: each is fetched once
    entries = 0
    if root.is_index and platforms and len(platforms) == 1:
        picked = root.select(platforms[0])
        chosen.append(str(picked.platform))
        root = source.manifest(picked)

    def count(descriptors: Sequence[Descriptor], digest: str) -> None:
        nonlocal entries
        entries += len(descriptors)
        if entries > MAX_DESCRIPTORS or len(visited) > MAX_MANIFESTS:
            raise FormatError(f"{root.digest} lists more than {MAX_MANIFESTS} manifests or {MAX_DESCRIPTORS} "
                              f"descriptors (at {digest}): refusing to walk it")

    def visit(manifest: Manifest, depth: int, is_root: bool) -> Manifest:
        nonlocal rewritten
        if depth > MAX_DEPTH:
            raise FormatError(f"index nesting deeper than {MAX_DEPTH} at {manifest.digest}")
        visited.add(manifest.digest)
        if manifest.is_index:
            kept: list[Descriptor] = []
            children = manifest.children
            count(children, manifest.digest)
            for child in children:
                if platforms and child.platform and not any(p.matches(child.platform) for p in platforms):
                    continue
                if not child.is_manifest:
                    continue
                if child.digest not in visited:
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
                rewritten = True
        else:
            found = manifest.blobs
            count(found, manifest.digest)
            for blob in found:
                if blob.distributable:
                    blobs.setdefault(blob.digest, blob)
        ordered.append(manifest)
        return manifest

    new_root = visit(root, 0, True)
    return _Plan(new_root, ordered, blobs, chosen, rewritten)


def _referrer_plans(source: ImageSource, lister: ReferrerSource, image: _Plan) -> list[_Plan]:
    """Every manifest that refers, directly or through other referrers, to a manifest of ``image``.

    Breadth first, so each referrer comes after its subject. A subset index made
    for a platform filter has no referrers: nothing can name a digest that did not exist.
    """
    subjects = collections.deque(m.digest for m in image.manifests if not (image.rewritten and m is image.root))
    asked = set(subjects)
    planned: set[str] = set()
    plans: list[_Plan] = []
    while subjects:
        subject = subjects.popleft()
        for found in lister.referrers(subject):
            if found.digest in planned:
                continue
            planned.add(found.digest)
            if len(plans) >= MAX_REFERRERS:
                raise FormatError(f"more than {MAX_REFERRERS} referrers of {image.root.digest}: not following them")
            manifest = source.manifest(found)
            # The listing is the registry's word, the manifest's subject is in its verified bytes: a
            # listed manifest naming another subject would be attached to that one in the target.
            named = manifest.subject
            if named is None or named.digest != subject:
                raise FormatError(f"{found.digest} is listed as a referrer of {subject}, but its subject is "
                                  f"{named.digest if named else 'missing'}: not copying it")
            plan = _plan(source, manifest, None)
            plans.append(plan)
            # An index among the referrers (an attestation list, say) may have referrers of its children too.
            for manifest in plan.manifests:
                if manifest.digest not in asked:
                    asked.add(manifest.digest)
                    subjects.append(manifest.digest)
    return plans


def copy_image(source: ImageSource, target: ImageTarget, tag: str | None, *,
               platforms: Sequence[Platform] | None = None, concurrency: int = 4,
               progress: CopyProgress | None = None, referrers: bool = False) -> CopyResult:
    """Copies the image ``source`` names into ``target``, listed under ``tag`` (or by digest when None).

    With ``referrers``, the manifests that refer to the copied ones (recursively)
    are copied too, by digest; both ends must be registries.
    """
    if referrers and not (isinstance(source, ReferrerSource) and isinstance(target, ReferrerTarget)):
        lacking = source.label if not isinstance(source, ReferrerSource) else target.label
        raise UnsupportedOperation(f"copying referrers needs a registry at both ends; {lacking} is not one")
    watcher = progress or NoProgress()
    plan = _plan(source, source.root(), platforms)
    referrer_plans: list[_Plan] = []
    if referrers and isinstance(source, ReferrerSource):
        referrer_plans = _referrer_plans(source, source, plan)
    result = CopyResult(plan.root.digest, plan.root.media_type, platforms=plan.platforms)
    blobs = dict(plan.blobs)
    for referrer in referrer_plans:
        for digest, descriptor in referrer.blobs.items():
            blobs.setdefault(digest, descriptor)
    _move_blobs(source, target, blobs.values(), concurrency, watcher, result)
    for manifest in plan.manifests:
        is_root = manifest is plan.root
        if not is_root and target.has_manifest(manifest.descriptor()):
            continue
        target.put_manifest(manifest, tag if is_root else None, is_root)
        result.manifests.append(manifest.digest)
    if isinstance(target, ReferrerTarget):
        _put_referrers(target, target, referrer_plans, result)
    return result


def _put_referrers(target: ImageTarget, writer: ReferrerTarget, plans: Sequence[_Plan], result: CopyResult) -> None:
    """Each referrer after its subject; the children of a referrer index before it."""
    for plan in plans:
        for manifest in plan.manifests:
            if manifest is plan.root:
                # Always written: the target may hold the manifest yet miss it in its fallback tag index.
                writer.put_referrer(manifest)
                result.referrers.append(manifest.digest)
            elif not target.has_manifest(manifest.descriptor()):
                target.put_manifest(manifest, None, False)
                result.manifests.append(manifest.digest)


def _move_blobs(source: ImageSource, target: ImageTarget, blobs: Iterable[Descriptor], concurrency: int,
                watcher: CopyProgress, result: CopyResult) -> None:
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
    pending = sorted(blobs, key=lambda d: d.size, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="wharf-blob") as pool:
        futures = [pool.submit(move, blob) for blob in pending]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
