"""Whether a blob already stored may be linked into another repository without an upload:
what a mount (POST ?mount=) and a manifest PUT that references blobs stored elsewhere share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.errors import BLOB_UNKNOWN, RegistryError
from services.common.names import is_valid_name

if TYPE_CHECKING:
    from services.api.context import Context


def mountable_size(ctx: Context, digest: str, source: str | None = None) -> int | None:
    """The blob's size when the caller may mount it (from ``source``, or from any repository
    linking it that the caller may pull); None otherwise."""
    if source:
        if not is_valid_name(source) or not ctx.authorizer.pullable([source]):
            return None
        try:
            return ctx.clients.cache.blob_size(source, digest)
        except RegistryError as err:
            if err.error is BLOB_UNKNOWN:
                return None
            raise
    holders = ctx.clients.metadata.blob_repositories(digest)
    if not ctx.authorizer.pullable(list(holders.repositories)):
        return None
    return int(holders.size)


def mountable_sizes(ctx: Context, wanted: list[str]) -> list[int | None]:
    """mountable_size of each of ``wanted`` from any repository, the caller's rights asked once for
    all of their holders (a manifest naming thousands of blobs of other repositories)."""
    holders = [ctx.clients.metadata.blob_repositories(digest) for digest in wanted]
    visible = ctx.authorizer.pullable_set(sorted({name for found in holders for name in found.repositories}))
    return [int(found.size) if visible.intersection(found.repositories) else None for found in holders]
