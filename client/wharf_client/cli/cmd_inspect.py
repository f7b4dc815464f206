"""Looking at and managing what a registry holds: tags, catalog, inspect, digest, tag, delete."""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
from typing import Any

from wharf_client import digest as digests
from wharf_client import platform as platforms
from wharf_client.cli.context import Context, UsageError
from wharf_client.errors import NotFoundError, PlatformNotFound, RegistryError, UnsupportedOperation
from wharf_client.manifest import Manifest
from wharf_client.reference import parse, parse_registry, validate_tag
from wharf_client.registry import Repository
from wharf_client.untrusted import parse_json, printable


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    tags = commands.add_parser("tags", parents=[common], help="list the tags of a repository")
    tags.add_argument("repository", help="e.g. localhost:5000/app")
    tags.add_argument("--page-size", type=int, default=None, metavar="N", help="tags per request (n=)")
    tags.set_defaults(run=run_tags)

    catalog = commands.add_parser("catalog", parents=[common], help="list the repositories of a registry")
    catalog.add_argument("registry", help="HOST[:PORT] of the registry")
    catalog.add_argument("--page-size", type=int, default=None, metavar="N", help="names per request (n=)")
    catalog.set_defaults(run=run_catalog)

    inspect = commands.add_parser("inspect", parents=[common], help="show a manifest and its config")
    inspect.add_argument("reference", help="REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST")
    inspect.add_argument("--platform", help="in an index, show this platform's image")
    inspect.add_argument("--raw", action="store_true", help="print the manifest exactly as served")
    inspect.add_argument("--config", action="store_true", help="print the image config exactly as stored")
    inspect.set_defaults(run=run_inspect)

    digest = commands.add_parser("digest", parents=[common], help="print the digest a reference resolves to")
    digest.add_argument("reference", help="REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST")
    digest.add_argument("--platform", help="the digest of this platform's manifest in an index")
    digest.set_defaults(run=run_digest)

    tag = commands.add_parser("tag", parents=[common], help="give an existing manifest more tags")
    tag.add_argument("reference", help="the manifest, by tag or digest")
    tag.add_argument("tags", nargs="+", metavar="TAG", help="new tag(s) in the same repository")
    tag.set_defaults(run=run_tag)

    delete = commands.add_parser(
        "delete", aliases=["rm"], parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="remove a tag, or (--manifest, or a digest) a manifest with every tag on it",
        description="REPO:TAG removes that tag; the manifest and its other tags stay.\n"
                    "REPO@DIGEST, or REPO:TAG --manifest, deletes the manifest itself, and with it every tag\n"
                    "that points at it: when there are others, it asks first (or needs --yes).",
        epilog="examples:\n  wharf rm localhost:5000/team/app:ci-1234\n"
               "  wharf rm localhost:5000/team/app:v1 --manifest --yes")
    delete.add_argument("reference", help="REPO:TAG or REPO@DIGEST")
    delete.add_argument("--manifest", action="store_true",
                        help="delete the manifest the tag points at, with every tag on it")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask before other tags go too")
    delete.add_argument("--untag", action="store_true", help=argparse.SUPPRESS)  # what REPO:TAG now does
    delete.set_defaults(run=run_delete)


def _page_size(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UsageError("--page-size must be positive")
    return value


def run_tags(ctx: Context) -> int:
    ref = parse(ctx.args.repository)
    names = list(ctx.client.repository(ref).tags(_page_size(ctx.args.page_size)))
    ctx.emit({"name": ref.name, "tags": names}, "\n".join(names) if names else None)
    return 0


def run_catalog(ctx: Context) -> int:
    registry = parse_registry(ctx.args.registry)
    names = list(ctx.client.catalog(registry, _page_size(ctx.args.page_size)))
    ctx.emit({"registry": registry, "repositories": names}, "\n".join(names) if names else None)
    return 0


def _resolve(repo: Repository, identifier: str, platform: str | None) -> Manifest:
    """The manifest for ``platform``: the index's entry for it, or the image itself when the image
    is for that platform. An image for another platform is not an answer (PlatformNotFound)."""
    manifest = repo.get_manifest(identifier)
    if not platform:
        return manifest
    wanted = platforms.parse(platform)
    if manifest.is_index:
        return repo.get_manifest(manifest.select(wanted).digest)
    config = _json_or_none(repo.fetch_blob(manifest.config)) if manifest.config else None
    actual = platforms.from_json(config) if isinstance(config, dict) else None
    if actual is not None and not wanted.matches(actual):
        raise PlatformNotFound(f"{repo.name}@{manifest.digest} is an image for {actual}, not {wanted}")
    return manifest


def run_inspect(ctx: Context) -> int:
    args = ctx.args
    ref = parse(args.reference, default_tag=True)
    repo = ctx.client.repository(ref)
    manifest = _resolve(repo, ref.identifier, args.platform)
    if args.raw and args.config:
        raise UsageError("--raw and --config are exclusive")
    config_bytes = b""
    config_desc = manifest.config
    if config_desc and (args.config or not args.raw):
        config_bytes = repo.fetch_blob(config_desc)
    if args.raw or args.config:
        if args.config and config_desc is None:
            raise UsageError(f"{ref} is an index: choose an image with --platform")
        sys.stdout.buffer.write(config_bytes if args.config else manifest.content)
        sys.stdout.buffer.flush()
        return 0
    config = _json_or_none(config_bytes)
    payload: dict[str, Any] = {"reference": str(ref), "digest": manifest.digest, "mediaType": manifest.media_type,
                               "size": len(manifest.content), "manifest": manifest.payload}
    if config is not None:
        payload["config"] = config
    ctx.emit(payload, _describe(ref.name, manifest, config))
    return 0


def _json_or_none(data: bytes) -> Any:
    try:
        return parse_json(data) if data else None
    except ValueError:
        return None


def _describe(name: str, manifest: Manifest, config: Any) -> str:
    lines = [f"Name:       {name}@{manifest.digest}", f"Media type: {manifest.media_type}",
             f"Size:       {len(manifest.content)} bytes"]
    if manifest.artifact_type:
        lines.append(f"Artifact:   {manifest.artifact_type}")
    if manifest.subject:
        lines.append(f"Subject:    {manifest.subject.digest}")
    if manifest.is_index:
        lines.append("Manifests:")
        for child in manifest.children:
            lines.append(f"  {child.platform or '-'!s:<20} {child.digest}  {child.size:>8}  {child.media_type}")
        return "\n".join(lines)
    if isinstance(config, dict):
        platform = "/".join(str(config[k]) for k in ("os", "architecture", "variant") if config.get(k))
        if platform:
            lines.append(f"Platform:   {platform}")
        if config.get("created"):
            lines.append(f"Created:    {config['created']}")
    if manifest.config:
        lines.append(f"Config:     {manifest.config.digest}  {manifest.config.media_type}")
    layers = manifest.layers
    lines.append(f"Layers:     {len(layers)}, {sum(layer.size for layer in layers):,} bytes")
    for layer in layers:
        lines.append(f"  {layer.digest}  {layer.size:>12,}  {layer.media_type}")
    for key, value in manifest.annotations.items():
        lines.append(f"Annotation: {key}={value}")
    return "\n".join(lines)


def run_digest(ctx: Context) -> int:
    ref = parse(ctx.args.reference, default_tag=True)
    repo = ctx.client.repository(ref)
    if ctx.args.platform:
        digest = _resolve(repo, ref.identifier, ctx.args.platform).digest
    else:
        found = repo.head_manifest(ref.identifier)
        if found is None:
            raise NotFoundError("HEAD", f"{ref}", 404, [], "manifest unknown")
        digest = found.digest
    ctx.emit({"reference": str(ref), "digest": digest}, digest)
    return 0


def run_tag(ctx: Context) -> int:
    ref = parse(ctx.args.reference, default_tag=True)
    new_tags = [validate_tag(t) for t in ctx.args.tags]
    repo = ctx.client.repository(ref)
    manifest = repo.get_manifest(ref.identifier)
    for tag in new_tags:
        repo.put_manifest(manifest, tag)
    # "tags" holds tag names, as in `wharf tags --json`; the full references are beside them.
    ctx.emit({"name": ref.name, "digest": manifest.digest, "tags": new_tags,
              "references": [str(ref.with_tag(t)) for t in new_tags]},
             "\n".join(str(ref.with_tag(t)) for t in new_tags))
    return 0


def run_delete(ctx: Context) -> int:
    ref = parse(ctx.args.reference, default_tag=True)
    repo = ctx.client.repository(ref)
    if not ref.digest and not ctx.args.manifest:
        return _untag(ctx, repo, ref.tag or "")
    if ctx.args.untag:
        raise UsageError("--untag removes a tag: give REPO:TAG, without --manifest")
    digest = ref.digest
    if not digest:
        found = repo.head_manifest(ref.identifier)
        if found is None:
            raise NotFoundError("HEAD", str(ref), 404, [], "manifest unknown")
        digest = found.digest
    digest = digests.validate(digest)
    if not ctx.args.yes:
        others = [tag for tag in _tags_on(repo, digest) if tag != ref.tag]
        if others and not _confirmed(f"{ref.name}@{digest} also carries the tag(s) {', '.join(others)}, "
                                     "which go with it. Delete? [y/N] "):
            raise UsageError(f"not deleted: {ref.name}@{digest} also carries {', '.join(others)} "
                             "(--yes deletes it anyway; `wharf rm REPO:TAG` removes one tag)")
    repo.delete_manifest(digest)
    ctx.emit({"deleted": f"{ref.name}@{digest}"}, f"Deleted {ref.name}@{digest}")
    return 0


def _untag(ctx: Context, repo: Repository, tag: str) -> int:
    try:
        repo.delete_tag(tag)
    except RegistryError as err:
        if err.status in (400, 405):  # Distribution answers DIGEST_INVALID: it deletes by digest only
            raise UnsupportedOperation(f"{err} (this registry cannot remove a tag alone; `wharf rm --manifest` "
                                       "deletes the manifest and every tag on it)") from None
        raise
    ctx.emit({"untagged": f"{repo.name}:{tag}"}, f"Untagged {repo.name}:{tag}")
    return 0


def _tags_on(repo: Repository, digest: str) -> list[str]:
    """The repository's tags that point at ``digest`` (a HEAD per tag, eight at a time)."""
    tags = list(repo.tags())
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        found = list(pool.map(repo.head_manifest, tags))
    return [tag for tag, descriptor in zip(tags, found, strict=True) if descriptor and descriptor.digest == digest]


def _confirmed(question: str) -> bool:
    """Asks on the terminal; without one (a script), the answer is no."""
    if not sys.stdin.isatty():
        return False
    sys.stderr.write(printable(question))  # it names the registry's tags
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")

