"""What both ends of every internal gRPC call agree on (the gateway's clients and the services)."""

from __future__ import annotations

# The metadata key that carries the HTTP request's id to every service it reaches.
REQUEST_ID_KEY = "x-request-id"
# The largest manifest a gateway may be configured to accept (WHARF_MAX_MANIFEST_BYTES).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# Bounded message size. Data streams use pieces of at most 1 MiB; the largest message is a
# manifest's PutManifest, which carries the manifest and, in its referrers descriptor, its
# annotations again: twice the largest manifest, with room for the rest. Below that, a manifest
# within the gateway's limit was refused by gRPC (RESOURCE_EXHAUSTED, which reads as 429).
MAX_MESSAGE_BYTES = 2 * MAX_MANIFEST_BYTES + 8 * 1024 * 1024
