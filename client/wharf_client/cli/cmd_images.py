"""``wharf push``, ``pull`` and ``copy``: one copy engine between registries, OCI layouts and docker tarballs."""

from __future__ import annotations

import argparse
import pathlib

from wharf_client import platform as platforms
from wharf_client.cli.context import Context, UsageError, add_transfer_options, add_upload_options
from wharf_client.copy import CopyResult, copy_image
from wharf_client.dockerarchive import DockerArchiveSource, DockerArchiveTarget
from wharf_client.layout import OciLayout
from wharf_client.reference import Reference, parse
from wharf_client.stores import (
    ImageSource,
    ImageTarget,
    LayoutImageSource,
    LayoutImageTarget,
    RegistryImageSource,
    RegistryImageTarget,
)

_TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    push = commands.add_parser("push", parents=[common], help="push an OCI layout or a docker tarball to a registry")
    push.add_argument("source", type=pathlib.Path, help="OCI layout directory or `docker save` tarball")
    push.add_argument("reference", help="where to push, e.g. localhost:5000/app:1.0")
    push.add_argument("--name", help="which image of the source: a layout's ref name or a tarball's repo tag")
    push.add_argument("--platform", action="append", default=[], help="push only this platform (repeatable)")
    add_upload_options(push)
    add_transfer_options(push)
    push.set_defaults(run=run_push)

    pull = commands.add_parser("pull", parents=[common], help="pull an image into an OCI layout or a docker tarball")
    pull.add_argument("reference", help="the image: REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST")
    pull.add_argument("destination", type=pathlib.Path, help="layout directory, or a .tar file for docker load")
    pull.add_argument("--format", choices=["oci", "docker"],
                      help="oci (layout directory) or docker (tarball); default: docker when DESTINATION ends in .tar")
    pull.add_argument("--platform", action="append", default=[],
                      help="os/arch[/variant]; default: every platform for oci, this machine's for docker")
    add_transfer_options(pull)
    pull.set_defaults(run=run_pull)

    copy = commands.add_parser("copy", aliases=["cp"], parents=[common],
                               help="copy an image between registries (every platform by default)")
    copy.add_argument("source", help="the image to copy: REGISTRY/REPO:TAG or @DIGEST")
    copy.add_argument("destination", help="target reference; without a tag, the source's tag is kept")
    copy.add_argument("--platform", action="append", default=[], help="copy only this platform (repeatable)")
    copy.add_argument("-r", "--referrers", action="store_true",
                      help="also copy the manifests that refer to the image (signatures, SBOMs, attestations), "
                           "recursively")
    add_upload_options(copy)
    add_transfer_options(copy)
    copy.set_defaults(run=run_copy)


def _platforms(values: list[str]) -> list[platforms.Platform] | None:
    return [platforms.parse(value) for value in values] or None


def open_local(path: pathlib.Path, name: str | None, concurrency: int) -> ImageSource:
    if path.is_dir():
        return LayoutImageSource(OciLayout.open(path), name)
    if path.is_file():
        return DockerArchiveSource(path, name, concurrency=concurrency)
    raise UsageError(f"{path}: no such file or directory")


_OUTCOME_WORDS = {"uploaded": "transferred", "exists": "already present", "mounted": "mounted"}


def _summary(result: CopyResult) -> str:
    counts = ", ".join(f"{count} {_OUTCOME_WORDS.get(outcome, outcome)}"
                       for outcome, count in sorted(result.blobs.items())) or "no blobs"
    referrers = f"; {len(result.referrers)} referrers" if result.referrers else ""
    return f"blobs: {counts}; {result.bytes_moved:,} bytes moved{referrers}"


def _result(ref: Reference, result: CopyResult) -> dict[str, object]:
    return {"reference": str(ref), "digest": result.digest, "mediaType": result.media_type,
            "platforms": result.platforms, "blobs": result.blobs, "bytes": result.bytes_moved,
            "manifests": result.manifests, "referrers": result.referrers}


def _run(ctx: Context, source: ImageSource, target: ImageTarget, tag: str | None, platform_args: list[str],
         verb: str, referrers: bool = False) -> CopyResult:
    try:
        with ctx.bars(verb) as bars:
            return copy_image(source, target, tag, platforms=_platforms(platform_args),
                              concurrency=ctx.client.options.concurrency, progress=bars, referrers=referrers)
    finally:
        source.close()
        target.close()


def run_push(ctx: Context) -> int:
    args = ctx.args
    ref = parse(args.reference)
    tag = ref.tag or (None if ref.digest else "latest")
    source = open_local(args.source, args.name, ctx.client.options.concurrency)
    target = RegistryImageTarget(ctx.client.repository(ref))
    result = _run(ctx, source, target, tag, args.platform, "push")
    if ref.digest and ref.digest != result.digest:
        raise UsageError(f"pushed {result.digest}, which is not the digest {ref.digest} in the reference")
    pushed = ref.with_tag(tag) if tag else ref.with_digest(result.digest)
    ctx.info(f"{pushed}: {_summary(result)}")
    ctx.emit(_result(pushed, result), f"{pushed.name}@{result.digest}")
    return 0


def _pull_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    name = args.destination.name
    return "docker" if args.destination.is_file() or name.endswith(_TARBALL_SUFFIXES) else "oci"


def run_pull(ctx: Context) -> int:
    args = ctx.args
    ref = parse(args.reference, default_tag=True)
    source = RegistryImageSource(ctx.client.repository(ref), ref.identifier)
    platform_args = list(args.platform)
    target: ImageTarget
    if _pull_format(args) == "docker":
        platform_args = platform_args or [str(platforms.host())]
        if len(platform_args) != 1:
            raise UsageError("a docker tarball holds one platform: pass one --platform")
        tags = [ref.with_tag(ref.tag).familiar()] if ref.tag else []
        target = DockerArchiveTarget(args.destination, tags)
    else:
        target = LayoutImageTarget(OciLayout.create(args.destination))
    result = _run(ctx, source, target, ref.tag, platform_args, "pull")
    ctx.info(f"{ref} -> {args.destination}: {_summary(result)}")
    ctx.emit({**_result(ref, result), "destination": str(args.destination)}, f"{ref.name}@{result.digest}")
    return 0


def run_copy(ctx: Context) -> int:
    args = ctx.args
    src = parse(args.source, default_tag=True)
    dst = parse(args.destination)
    tag = dst.tag or (None if dst.digest else src.tag)
    source_repo = ctx.client.repository(src)
    mount_from = [src.repository] if src.registry == dst.registry else []
    source = RegistryImageSource(source_repo, src.identifier)
    target = RegistryImageTarget(ctx.client.repository(dst), mount_from)
    result = _run(ctx, source, target, tag, args.platform, "copy", referrers=args.referrers)
    if dst.digest and dst.digest != result.digest:
        raise UsageError(f"copied {result.digest}, which is not the digest {dst.digest} in the destination")
    copied = dst.with_tag(tag) if tag else dst.with_digest(result.digest)
    ctx.info(f"{src} -> {copied}: {_summary(result)}")
    ctx.emit({**_result(copied, result), "source": str(src)}, f"{copied.name}@{result.digest}")
    return 0
