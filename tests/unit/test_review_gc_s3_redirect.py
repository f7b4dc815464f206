"""Hostile review (2026-12-03): presigned redirects of the S3 driver."""

from __future__ import annotations

import pytest

from services.blobstore.settings import BlobStoreSettings
from services.common.settings import SettingsError, load


@pytest.mark.parametrize("ttl", ["0", "-5", "604801"])
def test_a_redirect_lifetime_s3_cannot_sign_is_refused_at_start(ttl: str) -> None:
    """SigV4 presigns from 1 s to 7 days. Outside that the blob store started, and every blob GET
    answered `500 INTERNAL` (seen on SeaweedFS with 0 and 700000): each presign raised."""
    with pytest.raises(SettingsError, match="WHARF_S3_REDIRECT_TTL"):
        load(BlobStoreSettings, {"WHARF_S3_REDIRECT_TTL": ttl})
    assert load(BlobStoreSettings, {"WHARF_S3_REDIRECT_TTL": "604800"}).s3_redirect_ttl == 604800
