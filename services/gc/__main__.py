"""`wharf-gc`: one garbage collection run against the registry's Redis and blob storage.

It reads the same environment as the services it works behind: the metadata service's
``WHARF_REDIS_URL`` and the blob store's ``WHARF_STORAGE``, ``WHARF_DATA_DIR`` and
``WHARF_S3_*`` (to list and stat blobs), and ``WHARF_BLOBSTORE_ADDR`` and
``WHARF_INTERNAL_TOKEN_FILE``: it deletes blobs through the blob store's ``Delete`` call.
Run it where Redis, the storage and a blob store are reachable (a Kubernetes Job, a cron
entry next to ``make run``); the registry stays up, read-only for the duration of the run.
Next to ``make run`` (same directory, or the same ``WHARF_DATA_DIR``) it finds the stack's
Redis, blob stores and internal secret by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import grpc
import redis

from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.common import logs, redisconn
from services.common.internal_auth import authenticated_channel, read_token
from services.common.settings import SettingsError, load_or_exit
from services.gc.collector import Collector, MaintenanceBusy, MaintenanceLost
from services.gc.settings import GcSettings
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as bpb_grpc
from services.metadata import invalidation
from services.metadata.settings import MetadataSettings
from services.stack import records


def _blob_deleter(address: str, token: str) -> Callable[[str], bool]:
    """Deletes a blob through the blob store's Delete call (any replica: they share the storage)."""
    stub = bpb_grpc.BlobStoreStub(authenticated_channel(grpc.insecure_channel(address), token))

    def delete(digest: str) -> bool:
        try:
            return bool(stub.Delete(bpb.DeleteRequest(digest=digest), timeout=60).deleted)
        except grpc.RpcError as err:
            raise RuntimeError(f"the blob store at {address} did not delete {digest}: {err.code().name}") from None
    return delete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wharf-gc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=3600.0,
                        help="seconds a blob must have been stored before it can be collected (default 3600)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    parser.add_argument("--maintenance-ttl", type=float, default=3600.0,
                        help="seconds after which the read-only mode lapses should this run die (default 3600)")
    args = parser.parse_args(argv)
    if args.grace < 0 or args.maintenance_ttl <= 0:
        parser.error("--grace must be >= 0 and --maintenance-ttl > 0")
    logs.configure(os.environ.get("WHARF_LOG_LEVEL", "info"))
    metadata = load_or_exit(MetadataSettings, os.environ, "wharf-gc")
    storage = load_or_exit(BlobStoreSettings, os.environ, "wharf-gc")
    redis_url = records.setting(os.environ, "WHARF_REDIS_URL", storage.data_dir, records.REDIS_URL,
                                metadata.redis_url)
    client = redisconn.sync_client(redis_url, socket_timeout=30, socket_connect_timeout=5)
    def announce(repositories: set[str]) -> None:
        invalidation.announce(redis_url, repositories, metadata.cache_lease, metadata.cache_ack_timeout)

    gc_settings = load_or_exit(GcSettings, os.environ, "wharf-gc")
    address = records.setting(os.environ, "WHARF_BLOBSTORE_ADDR", storage.data_dir, records.BLOBSTORE_ADDRESS,
                              gc_settings.blobstore_addr)
    token_file = gc_settings.internal_token_file or str(storage.data_dir / records.INTERNAL_TOKEN)
    try:
        delete_blob = _blob_deleter(address.split(",")[0], read_token(token_file))
    except SettingsError as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2
    collector = Collector(client, create_driver(storage), args.grace, args.dry_run, args.maintenance_ttl, announce,
                          delete_blob)
    try:
        report = collector.run()
    except MaintenanceBusy as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2
    except MaintenanceLost as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 3
    except redis.ConnectionError as exc:
        print(f"wharf-gc: cannot reach Redis at {redis_url}: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the blob store refused or could not be reached
        print(f"wharf-gc: {exc}; point WHARF_BLOBSTORE_ADDR at a blob store", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
