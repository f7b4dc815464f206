"""Repository names and tags, validated against the distribution spec's grammar."""

from __future__ import annotations

import re

from services.common.errors import MANIFEST_INVALID, NAME_INVALID, TAG_INVALID, RegistryError

# <name> from the distribution spec: path components of lowercase alphanumerics
# joined by separators, components joined by "/".
NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
# Many clients assume a name fits in 255 characters including the registry host.
MAX_NAME_LENGTH = 255


def is_valid_name(name: str) -> bool:
    # fullmatch: "$" would also accept a trailing newline ("a/b\n").
    return len(name) <= MAX_NAME_LENGTH and bool(NAME_RE.fullmatch(name))


def validate_name(name: str) -> str:
    if not is_valid_name(name):
        raise RegistryError(NAME_INVALID, f"invalid repository name {name[:300]!r}")
    return name


def is_valid_tag(tag: str) -> bool:
    return bool(TAG_RE.fullmatch(tag))


def validate_tag(tag: str, *, for_manifest_put: bool = False) -> str:
    if not is_valid_tag(tag):
        error = MANIFEST_INVALID if for_manifest_put else TAG_INVALID
        raise RegistryError(error, f"invalid tag {tag[:200]!r}")
    return tag
