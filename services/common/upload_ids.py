"""Upload session ids a gateway issues by itself: a POST that starts an upload costs no call.

Starting an upload used to create the session in the blob store, one gRPC call and one
durable write for every blob pushed, most of them small. Now a gateway answers the POST
with an id that says which repository it was issued for and when, sealed with a key
derived from the stack's internal secret (which every gateway and blob store replica
holds). The blob store creates the session only when bytes first arrive; until then a
sealed id that is not expired is an empty session (services/blobstore/blobs.py).

Format: 56 lowercase hex characters, ``<32 random><8 issue time, unix seconds><16 seal>``,
the seal being the first 64 bits of HMAC-SHA256(key, repository + NUL + the first 40).
A forged or altered id, or one presented for another repository, fails the seal and is
an unknown upload, as a made-up id always was. Ids the blob store made itself (32 hex
characters) are still accepted, so sessions started before an upgrade finish after it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time

SEALED_RE = re.compile(r"^[0-9a-f]{56}\Z")
# Any upload id (unanchored): 32 hex characters, made by the blob store, or 56, sealed here.
ANY_ID = "(?:[0-9a-f]{32}|[0-9a-f]{56})"
_PURPOSE = b"wharf upload ids v1"


def key_from(internal_token: str) -> bytes:
    """The sealing key: the stack's secret itself never seals anything a client sees."""
    return hmac.new(internal_token.encode(), _PURPOSE, hashlib.sha256).digest()


def _seal(key: bytes, repository: str, body: str) -> str:
    return hmac.new(key, f"{repository}\0{body}".encode(), hashlib.sha256).hexdigest()[:16]


def issue(key: bytes, repository: str, now: float | None = None) -> str:
    body = os.urandom(16).hex() + f"{int(time.time() if now is None else now) & 0xFFFFFFFF:08x}"
    return body + _seal(key, repository, body)


def issued_at(key: bytes | None, upload_id: str, repository: str) -> int | None:
    """When a sealed id was issued for ``repository``; None when it is not one (a blob store id,
    a forgery, another repository's, or no key to check it with)."""
    if key is None or not repository or not SEALED_RE.match(upload_id):
        return None
    body, seal = upload_id[:40], upload_id[40:]
    if not hmac.compare_digest(seal, _seal(key, repository, body)):
        return None
    return int(body[32:], 16)
