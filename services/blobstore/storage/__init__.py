"""Storage drivers: one interface (:mod:`.base`), one module per backend, found by name.

Drivers are extensions of the ``wharf.storage`` entry-point group (services/common/plugins.py):
the filesystem and S3 drivers are registered in pyproject.toml exactly as a third party's
package registers its own, and ``WHARF_STORAGE`` names the one to use. An unknown name, a driver
that fails to import or implements another interface version is an error, never a fallback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.common import config_file, plugins

if TYPE_CHECKING:
    from services.blobstore.settings import BlobStoreSettings
    from services.blobstore.storage.base import StorageDriver

GROUP = "wharf.storage"


def options(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``storage_options`` section (``WHARF_STORAGE_OPTIONS_FILE``, or ``storage_options:`` in
    ``WHARF_CONFIG``) for a third-party driver's own options; empty when absent."""
    section = config_file.section(environ, "storage_options")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise config_file.ConfigFileError("the storage_options section must be a mapping of option names to values")
    return dict(section)


def driver_class(name: str) -> type[StorageDriver]:
    """The driver class registered as ``name``; PluginError naming what is wrong."""
    from services.blobstore.storage.base import StorageDriver

    return plugins.load_class(GROUP, name, StorageDriver)


def create_driver(settings: BlobStoreSettings, environ: Mapping[str, str] | None = None) -> StorageDriver:
    """The driver ``WHARF_STORAGE`` names, behind the wrapper that checks keys and the not-found
    contract (base.CheckedDriver)."""
    from services.blobstore.storage.base import CheckedDriver, StorageDriver

    cls = driver_class(settings.storage)
    built = plugins.build(f"{GROUP} {settings.storage!r}", StorageDriver, cls.from_settings, settings,
                          options(os.environ if environ is None else environ))
    return CheckedDriver(built)
