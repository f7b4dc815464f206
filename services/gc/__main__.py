"""`wharf-gc`: one garbage collection run against the registry's Redis and blob storage.

It reads the same environment as the services it works behind: the metadata service's
``WHARF_REDIS_URL`` and the blob store's ``WHARF_STORAGE``, ``WHARF_DATA_DIR`` and
``WHARF_S3_*`` (to list and stat blobs), and ``WHARF_METADATA_ADDR``, ``WHARF_BLOBSTORE_ADDR``
and ``WHARF_INTERNAL_TOKEN_FILE``: it removes metadata through the metadata service and deletes
blobs through the blob store's ``Delete`` call. Run it where Redis, the storage, the metadata
service and a blob store are reachable (a Kubernetes CronJob, a cron entry next to ``make run``);
the registry keeps serving pulls and pushes throughout.
Next to ``make run`` (same directory, or the same ``WHARF_DATA_DIR``) it finds the stack's
Redis, blob stores and internal secret by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import redis

from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.common import logs, plugins, redisconn
from services.common.errors import RegistryError
from services.common.internal_auth import read_token
from services.common.settings import SettingsError, load_or_exit
from services.gc.collector import CollectionBusy, Collector, LockLost, ReadOnly
from services.gc.settings import GcSettings
from services.maintenance import targets
from services.maintenance.clients import RegistryCalls
from services.metadata.settings import MetadataSettings
from services.mirror import config as mirror_config

MAX_GRACE = 100 * 365 * 24 * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wharf-gc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=3600.0,
                        help="seconds a blob must have been stored, a link made and a manifest arrived before "
                             "it can be collected (default 3600)")
    parser.add_argument("--delete-untagged", action="store_true",
                        help="also remove manifests no tag points at and no index names (their referrers go too)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    args = parser.parse_args(argv)
    # NaN passed the old check (and collected nothing), and a grace past int64 milliseconds or
    # infinite ended the run with a traceback: both now refused with the usage line.
    if not math.isfinite(args.grace) or not 0 <= args.grace <= MAX_GRACE:
        parser.error(f"--grace must be a number of seconds from 0 to {MAX_GRACE} (100 years)")
    logs.configure(os.environ.get("WHARF_LOG_LEVEL", "info"))
    # Every setting checked as the services would read it; where things are: as wharf-admin's
    # maintenance commands find them (variable, else what `make run` recorded, else the default).
    load_or_exit(MetadataSettings, os.environ, "wharf-gc")
    storage = load_or_exit(BlobStoreSettings, os.environ, "wharf-gc")
    load_or_exit(GcSettings, os.environ, "wharf-gc")
    where = targets.locate(os.environ)
    redis_url = where.redis_url
    client = redisconn.sync_client(redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        token = read_token(where.token_file)
    except SettingsError as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2
    try:
        mirrors = mirror_config.load(os.environ, secrets=False)  # the upstreams' size limits
    except mirror_config.MirrorsError as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2
    limits = {u.prefix: u.size_limit for u in mirrors.upstreams if u.size_limit is not None}
    try:
        driver = create_driver(storage)
    except (ValueError, plugins.PluginError) as exc:  # a driver that is missing, broken or refuses its options
        print(f"wharf-gc: WHARF_STORAGE={storage.storage}: {exc}", file=sys.stderr)
        return 2
    calls = RegistryCalls(where, token)
    collector = Collector(client, driver, calls, calls.delete_blob, args.grace, args.dry_run,
                          args.delete_untagged, size_limits=limits)
    try:
        report = collector.run()
    except (CollectionBusy, LockLost, ReadOnly) as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, LockLost) else 2
    except redis.ConnectionError as exc:
        print(f"wharf-gc: cannot reach Redis at {redis_url}: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, RegistryError) as exc:  # a service could not be reached, or refused
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 1
    finally:
        calls.close()
    print(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
