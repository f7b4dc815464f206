"""GET /v2/<name>/referrers/<digest>: the referrers of a subject as an OCI index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from flask import Response, request

from services.api.responses import json_response
from services.common import digests, mediatypes

if TYPE_CHECKING:
    from services.api.context import Context


def _artifact_type_filter() -> str:
    """The one ``artifactType`` the page is filtered by ("" for none). The spec defines a single
    value; given several different ones, the page is not filtered at all (and says so, by the
    absence of ``OCI-Filters-Applied``), so that the client filters it itself: filtering by the
    first alone, under that header, hid the referrers of every other type the client asked for."""
    asked = {value for value in request.args.getlist("artifactType") if value}
    return asked.pop() if len(asked) == 1 else ""


def list_referrers(ctx: Context, name: str, digest: str) -> Response:
    """The referrers in pages bounded in bytes (services/metadata/store.py, list_referrers): a
    subject with thousands of signatures, or referrers with large annotations, is still listed.
    ``Link`` names the next page by the last digest of this one (as the tag list does), so the
    cursor reveals nothing the caller was not just shown."""
    digests.validate(digest)
    artifact_type = _artifact_type_filter()
    after = request.args.get("last", "")
    if after:
        digests.validate(after)
    manifests: list[dict[str, Any]] = []
    found, more = ctx.clients.metadata.list_referrers(name, digest, artifact_type, after)
    for d in found:
        entry: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
        if d.artifact_type:
            entry["artifactType"] = d.artifact_type
        if d.annotations:
            entry["annotations"] = dict(d.annotations)
        manifests.append(entry)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    if more and found:
        query = {"last": found[-1].digest, **({"artifactType": artifact_type} if artifact_type else {})}
        headers["Link"] = f'<{request.path}?{urlencode(query)}>; rel="next"'
    mirrored = ctx.mirror.route(name) if not more else None  # the upstream's on the last page
    if mirrored is not None:
        # A mirrored repository: the upstream's referrers too (what is stored here stays listed
        # when the upstream cannot be asked).
        upstream, warning = ctx.mirror.referrers(digest, artifact_type, *mirrored)
        seen = {entry["digest"] for entry in manifests}
        manifests += [entry for entry in upstream if entry["digest"] not in seen
                      and (not artifact_type or entry.get("artifactType") == artifact_type)]
        if warning:
            headers["Warning"] = warning
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
    return json_response(index, headers=headers, content_type=mediatypes.OCI_INDEX)
