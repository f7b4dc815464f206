"""Storage drivers: one interface (:mod:`.base`), one module per backend, one factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.blobstore.settings import BlobStoreSettings
    from services.blobstore.storage.base import StorageDriver


def create_driver(settings: BlobStoreSettings) -> StorageDriver:
    """Maps ``WHARF_STORAGE`` to a driver, behind the wrapper that checks keys and the not-found
    contract (base.CheckedDriver); an unknown name is an error, never a fallback."""
    from services.blobstore.storage.base import CheckedDriver

    return CheckedDriver(_backend(settings))


def _backend(settings: BlobStoreSettings) -> StorageDriver:
    if settings.storage == "filesystem":
        from services.blobstore.storage.filesystem import FilesystemDriver

        return FilesystemDriver(settings.data_dir / "blobstore", expose_paths=settings.expose_paths)
    if settings.storage == "s3":
        from services.blobstore.storage.s3 import S3Config, S3Driver

        return S3Driver(S3Config(
            endpoint=settings.s3_endpoint, bucket=settings.s3_bucket, access_key=settings.s3_access_key,
            secret_key=settings.s3_secret(), region=settings.s3_region, prefix=settings.s3_prefix,
            secure=settings.s3_secure, redirect=settings.s3_redirect, redirect_ttl=settings.s3_redirect_ttl,
            redirect_endpoint=settings.s3_redirect_endpoint))
    raise ValueError(f"WHARF_STORAGE={settings.storage!r}: unknown storage driver (known: filesystem, s3)")
