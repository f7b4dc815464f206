"""What both ends of every internal gRPC call agree on (the gateway's clients and the services)."""

from __future__ import annotations

# The metadata key that carries the HTTP request's id to every service it reaches.
REQUEST_ID_KEY = "x-request-id"
# Bounded message size: data streams use 1 MiB chunks, manifests are at most 4 MiB.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
