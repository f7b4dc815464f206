"""Hostile review of garbage collection and the blob store (2026-12-03): what a collection may take
from the blob store, racing an upload's commit."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

from services.common.internal_auth import read_token
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.maintenance import targets
from services.maintenance.clients import RegistryCalls
from tests.integration.test_gc import _gc
from tests.support.stack import RunningStack


def test_a_blob_committed_after_a_pause_is_young_for_the_collector(
        start_stack: Callable[..., RunningStack]) -> None:
    """A client appends, pauses longer than the grace (a resumed upload), then commits. Between the
    blob store's commit and the gateway's link, the blob is stored and linked nowhere: a collection
    must count its age from the commit. The filesystem's rename kept the last append's time, and
    the collector deleted the blob it had just been given (the push then failed, or with `--grace`
    shorter than the upload lifetime, a blob committed moments ago was gone)."""
    stack = start_stack()
    where = targets.locate({"WHARF_DATA_DIR": str(stack.data_dir)})
    calls = RegistryCalls(where, read_token(where.token_file))
    try:
        data = os.urandom(5000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = calls._call("blobstore", "CreateUpload", bpb.CreateUploadRequest(repository="gc/paused"))
        ref = bpb.UploadRef(upload_id=started.upload_id, repository="gc/paused")
        calls._call("blobstore", "AppendUploadSingle", bpb.AppendRequest(upload=ref, offset=0, data=data))
        time.sleep(4)  # longer than the grace below
        calls._call("blobstore", "CommitUpload", bpb.CommitUploadRequest(upload=ref, digest=digest))
        assert calls.stored_size(digest) == 5000

        report = _gc(stack, "--grace", "3")  # the blob was committed just now: too young

        assert report["blobs_deleted"] == 0
        assert calls.stored_size(digest) == 5000
    finally:
        calls.close()
