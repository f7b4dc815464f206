"""Storage drivers: one interface (:mod:`.base`), one module per backend, one factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.blobstore.settings import BlobStoreSettings
    from services.blobstore.storage.base import StorageDriver


def create_driver(settings: BlobStoreSettings) -> StorageDriver:
    """Maps ``WHARF_STORAGE`` to a driver; an unknown name is an error, never a fallback."""
    if settings.storage == "filesystem":
        from services.blobstore.storage.filesystem import FilesystemDriver

        return FilesystemDriver(settings.data_dir / "blobstore", expose_paths=settings.expose_paths)
    raise ValueError(f"WHARF_STORAGE={settings.storage!r}: unknown storage driver (known: filesystem)")
