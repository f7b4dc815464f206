"""``example-dir``: blobs in a directory of the operator's choosing, given in the storage options.

It reuses Wharf's filesystem driver for the file handling (the example is about the extension
mechanism: registration, options, the interface version, the driver suite), and adds what a real
third-party driver adds: its own options, checked at start-up.

    WHARF_STORAGE=example-dir
    WHARF_STORAGE_OPTIONS_FILE=storage.yaml     # root: /srv/blobs
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage.base import API_VERSION
from services.blobstore.storage.filesystem import FilesystemDriver


class ExampleDirDriver(FilesystemDriver):
    wharf_interface = API_VERSION
    name = "example-dir"

    @classmethod
    def from_settings(cls, settings: BlobStoreSettings, options: Mapping[str, Any]) -> ExampleDirDriver:
        root = options.get("root")
        if not isinstance(root, str) or not root.startswith("/"):
            raise ValueError("example-dir needs root: an absolute directory path in the storage options")
        return cls(pathlib.Path(root), expose_paths=settings.expose_paths)
