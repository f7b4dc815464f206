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
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
import redis

from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.common import logs, redisconn
from services.common.errors import from_rpc_error
from services.common.internal_auth import authenticated_channel, read_token
from services.common.settings import SettingsError, load_or_exit
from services.gc.collector import CollectionBusy, Collector, LockLost
from services.gc.settings import GcSettings
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as bpb_grpc
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.gen.wharf.metadata.v1 import metadata_pb2_grpc as mpb_grpc
from services.metadata.settings import MetadataSettings
from services.mirror import config as mirror_config
from services.stack import records


def _blob_deleter(channel: grpc.Channel, address: str) -> Callable[[str], bool]:
    """Deletes a blob through the blob store's Delete call (any replica: they share the storage)."""
    stub = bpb_grpc.BlobStoreStub(channel)

    def delete(digest: str) -> bool:
        try:
            return bool(stub.Delete(bpb.DeleteRequest(digest=digest), timeout=60).deleted)
        except grpc.RpcError as err:
            raise RuntimeError(f"the blob store at {address} did not delete {digest}: {err.code().name}") from None
    return delete


class _Metadata:
    """The metadata service's collection calls, each with a deadline."""

    def __init__(self, channel: grpc.Channel, address: str) -> None:
        self._stub = mpb_grpc.MetadataStub(channel)
        self._address = address

    def _call(self, method: str, request: object) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=300)
        except grpc.RpcError as err:
            raise RuntimeError(f"the metadata service at {self._address} refused {method}: "
                               f"{from_rpc_error(err).message}") from None

    def collect(self, repository: str, grace_ms: int, delete_untagged: bool, dry_run: bool) -> tuple[list[str],
                                                                                                      list[str]]:
        answer = self._call("CollectRepository", mpb.CollectRequest(
            repository=repository, grace_ms=grace_ms, delete_untagged=delete_untagged, dry_run=dry_run))
        return list(answer.unlinked), list(answer.removed_manifests)

    def begin_delete(self, digest: str) -> tuple[str, str]:
        answer = self._call("BeginBlobDelete", mpb.BlobDeleteRequest(digest=digest))
        return answer.fence, answer.refused

    def end_delete(self, digest: str, fence: str) -> None:
        self._call("EndBlobDelete", mpb.BlobDeleteRequest(digest=digest, fence=fence))

    def delete_manifest(self, repository: str, digest: str) -> None:
        try:
            self._call("DeleteManifest", mpb.ManifestRef(repository=repository, reference=digest))
        except RuntimeError as exc:
            if "unknown" not in str(exc):  # deleted meanwhile by someone else: as good
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wharf-gc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=3600.0,
                        help="seconds a blob must have been stored, a link made and a manifest arrived before "
                             "it can be collected (default 3600)")
    parser.add_argument("--delete-untagged", action="store_true",
                        help="also remove manifests no tag points at and no index names (their referrers go too)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    args = parser.parse_args(argv)
    if args.grace < 0:
        parser.error("--grace must be >= 0")
    logs.configure(os.environ.get("WHARF_LOG_LEVEL", "info"))
    metadata = load_or_exit(MetadataSettings, os.environ, "wharf-gc")
    storage = load_or_exit(BlobStoreSettings, os.environ, "wharf-gc")
    redis_url = records.setting(os.environ, "WHARF_REDIS_URL", storage.data_dir, records.REDIS_URL,
                                metadata.redis_url)
    client = redisconn.sync_client(redis_url, socket_timeout=30, socket_connect_timeout=5)
    gc_settings = load_or_exit(GcSettings, os.environ, "wharf-gc")
    blobstore_address = records.setting(os.environ, "WHARF_BLOBSTORE_ADDR", storage.data_dir,
                                        records.BLOBSTORE_ADDRESS, gc_settings.blobstore_addr).split(",")[0]
    metadata_address = records.setting(os.environ, "WHARF_METADATA_ADDR", storage.data_dir,
                                       records.METADATA_ADDRESS, gc_settings.metadata_addr)
    token_file = gc_settings.internal_token_file or str(storage.data_dir / records.INTERNAL_TOKEN)
    try:
        token = read_token(token_file)
    except SettingsError as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2
    delete_blob = _blob_deleter(authenticated_channel(grpc.insecure_channel(blobstore_address), token),
                                blobstore_address)
    calls = _Metadata(authenticated_channel(grpc.insecure_channel(metadata_address), token), metadata_address)
    try:
        mirrors = mirror_config.load(os.environ, secrets=False)  # the upstreams' size limits
    except mirror_config.MirrorsError as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2
    limits = {u.prefix: u.size_limit for u in mirrors.upstreams if u.size_limit is not None}
    collector = Collector(client, create_driver(storage), calls, delete_blob, args.grace, args.dry_run,
                          args.delete_untagged, size_limits=limits)
    try:
        report = collector.run()
    except (CollectionBusy, LockLost) as exc:
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, CollectionBusy) else 3
    except redis.ConnectionError as exc:
        print(f"wharf-gc: cannot reach Redis at {redis_url}: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a service refused or could not be reached
        print(f"wharf-gc: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
