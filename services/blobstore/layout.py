"""The one module that turns digests and upload ids into storage keys.

Keys are "/"-separated and relative to the driver's root::

    blobs/
      <algorithm>/<first two hex chars>/<hex>/data     committed content, immutable
    uploads/
      <upload id>/data                                  bytes received so far
      <upload id>/info                                  JSON: repository, started_at
    fills/
      <algorithm>/<hex>/data                            a mirror's fill of that blob in progress (fills.py)

Every key is built from a digest that :func:`services.common.digests.parse`
accepted or from an upload id that :func:`upload_id_ok` accepted; nothing
else reaches the driver.
"""

from __future__ import annotations

import re
import uuid

from services.common import digests, upload_ids
from services.common.errors import BLOB_UPLOAD_UNKNOWN, RegistryError

BLOBS = "blobs"
UPLOADS = "uploads"
FILLS = "fills"
_UPLOAD_ID_RE = re.compile(rf"^{upload_ids.ANY_ID}\Z")


def blob_key(digest: str) -> str:
    algorithm, encoded = digests.parse(digest)
    return f"{BLOBS}/{algorithm}/{encoded[:2]}/{encoded}/data"


def fill_dir(digest: str) -> str:
    algorithm, encoded = digests.parse(digest)
    return f"{FILLS}/{algorithm}/{encoded}"


def fill_data_key(digest: str) -> str:
    return f"{fill_dir(digest)}/data"


def new_upload_id() -> str:
    return uuid.uuid4().hex


def upload_id_ok(upload_id: str) -> bool:
    return bool(_UPLOAD_ID_RE.match(upload_id or ""))


def _checked(upload_id: str) -> str:
    if not upload_id_ok(upload_id):
        raise RegistryError(BLOB_UPLOAD_UNKNOWN, "unknown upload id")
    return upload_id


def upload_dir(upload_id: str) -> str:
    return f"{UPLOADS}/{_checked(upload_id)}"


def upload_data_key(upload_id: str) -> str:
    return f"{upload_dir(upload_id)}/data"


def upload_info_key(upload_id: str) -> str:
    return f"{upload_dir(upload_id)}/info"


def upload_ended_key(upload_id: str) -> str:
    """A sealed session's mark that it ended: a key of its own, which no append ever writes."""
    return f"{upload_dir(upload_id)}/ended"
