"""``wharf artifact push|pull`` and ``wharf referrers``: files as OCI artifacts, and what refers to a manifest."""

from __future__ import annotations

import argparse
import pathlib

from wharf_client import digest as digests
from wharf_client import mediatypes
from wharf_client.artifact import parse_file_argument, pull_artifact, push_artifact
from wharf_client.cli.context import Context, UsageError, add_transfer_options, add_upload_options
from wharf_client.errors import NotFoundError
from wharf_client.manifest import Descriptor
from wharf_client.reference import Reference, parse
from wharf_client.registry import Repository

# What an artifact pushed without --artifact-type is: the type oras gives such artifacts.
DEFAULT_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    artifact = commands.add_parser("artifact", help="push or pull files as an OCI artifact")
    actions = artifact.add_subparsers(dest="artifact_command", metavar="ACTION", required=True)
    push = actions.add_parser("push", parents=[common], help="push files as an artifact")
    push.add_argument("reference", help="repository[:tag]; without a tag the artifact is pushed by digest")
    push.add_argument("files", nargs="*", metavar="FILE[:MEDIATYPE]",
                      help="files to push, each a layer titled with its name "
                           "(media type default application/octet-stream)")
    push.add_argument("--artifact-type", default=DEFAULT_ARTIFACT_TYPE,
                      help=f"the artifact's media type (default {DEFAULT_ARTIFACT_TYPE}, as oras uses)")
    push.add_argument("--annotation", "-a", action="append", default=[], metavar="KEY=VALUE",
                      help="manifest annotation (repeatable)")
    push.add_argument("--subject", help="the manifest this artifact refers to (tag, @digest, or full reference)")
    push.add_argument("--config", type=pathlib.Path, help="config blob file (default: the empty config)")
    push.add_argument("--config-media-type", default=None, help="media type of --config")
    add_upload_options(push)
    add_transfer_options(push)
    push.set_defaults(run=run_push)
    pull = actions.add_parser("pull", parents=[common], help="download an artifact's files")
    pull.add_argument("reference", help="the artifact: REPO:TAG or REPO@DIGEST")
    pull.add_argument("-o", "--output", type=pathlib.Path, default=pathlib.Path("."), help="directory (default .)")
    add_transfer_options(pull)
    pull.set_defaults(run=run_pull)

    referrers = commands.add_parser("referrers", parents=[common], help="list the artifacts that refer to a manifest")
    referrers.add_argument("reference", help="the manifest referred to: REPO:TAG or REPO@DIGEST")
    referrers.add_argument("--artifact-type", default="", help="only referrers of this type")
    referrers.set_defaults(run=run_referrers)


def _annotations(values: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise UsageError(f"annotation {value!r} is not KEY=VALUE")
        found[key] = text
    return found


def _resolve(repo: Repository, ref: Reference) -> Descriptor:
    found = repo.head_manifest(ref.identifier)
    if found is None:
        raise NotFoundError("HEAD", str(ref), 404, [], "manifest unknown")
    return found


def _subject(ctx: Context, target: Reference, text: str) -> Descriptor:
    if text.startswith("@") or digests.is_digest(text):
        subject_ref = target.with_digest(text.lstrip("@"))
    elif ":" not in text and "/" not in text:
        subject_ref = target.with_tag(text)
    else:
        subject_ref = parse(text, default_tag=True)
    if (subject_ref.registry, subject_ref.repository) != (target.registry, target.repository):
        raise UsageError(f"the subject {subject_ref} must be in the artifact's repository {target.name}")
    return _resolve(ctx.client.repository(subject_ref), subject_ref)


def run_push(ctx: Context) -> int:
    args = ctx.args
    ref = parse(args.reference)
    if ref.digest:
        raise UsageError("push an artifact to a repository or a tag, not a digest")
    repo = ctx.client.repository(ref)
    subject = _subject(ctx, ref, args.subject) if args.subject else None
    config = args.config.read_bytes() if args.config else None
    if config is not None and not args.config_media_type:
        raise UsageError("--config needs --config-media-type")
    files = [parse_file_argument(text) for text in args.files]
    with ctx.bars("push") as bars:  # a bar per file, as the other uploads show
        manifest = push_artifact(repo, files, artifact_type=args.artifact_type, tag=ref.tag,
                                 annotations=_annotations(args.annotation), subject=subject, config=config,
                                 config_media_type=args.config_media_type or mediatypes.OCI_EMPTY,
                                 progress_for=bars.single)
    pushed = ref.with_digest(manifest.digest)
    ctx.emit({"reference": str(ref), "digest": manifest.digest, "mediaType": manifest.media_type,
              "artifactType": args.artifact_type, "subject": subject.digest if subject else None},
             f"{pushed.name}@{manifest.digest}")
    return 0


def run_pull(ctx: Context) -> int:
    ref = parse(ctx.args.reference, default_tag=True)
    repo = ctx.client.repository(ref)
    written = pull_artifact(repo, ref.identifier, ctx.args.output)
    ctx.emit({"reference": str(ref), "files": [str(p) for p in written]}, "\n".join(str(p) for p in written))
    return 0


def run_referrers(ctx: Context) -> int:
    ref = parse(ctx.args.reference, default_tag=True)
    repo = ctx.client.repository(ref)
    digest = ref.digest or _resolve(repo, ref).digest
    found = repo.referrers(digest, ctx.args.artifact_type)
    lines = [f"{d.digest}  {d.artifact_type or '-'}  {d.size}" for d in found]
    ctx.emit({"subject": f"{ref.name}@{digest}", "referrers": [d.to_json() for d in found]},
             "\n".join(lines) if lines else None)
    return 0
