"""The auth service's part in the audit log (issue 19): admin API logins and admin changes.

The audit log lives with the metadata service (services/metadata/audit.py), which the auth
service otherwise never calls; ``WHARF_METADATA_ADDR`` says where it is. An admin call must not
wait for it, nor fail because of it: a record goes into a bounded queue, and one background
thread sends what has gathered, up to ``BATCH`` records per call, under a deadline. A send that
fails is logged (how many records, why) and dropped; so is a record that finds the queue full.

Without ``WHARF_METADATA_ADDR`` (a deployment that predates the audit log) the records are
written to this service's log instead, after one warning at start-up: the log holds the same
who/where/what/result, and no admin call is refused for want of an audit log.

Records carry no secret: the callers never put a password in one (server.py builds them).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any, Protocol

import grpc

from services.auth import peers
from services.common.errors import from_rpc_error
from services.common.internal_auth import authenticated_channel
from services.common.rpc import REQUEST_ID_KEY
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.gen.wharf.governance.v1 import governance_pb2_grpc as gpb_grpc

log = logging.getLogger("wharf.auth")

# Records waiting to be sent (beyond it, records are dropped and counted), per call, how long
# the thread gathers a batch after its first record, each call's deadline, and how long the
# service's stop waits for what is still queued.
QUEUE_MAX = 10_000
BATCH = 500
GATHER_S = 0.5
DEADLINE_S = 5.0
CLOSE_WAIT_S = 5.0


class AuditTrail(Protocol):
    """Where the auth service's audit records go; ``record`` never blocks for long nor raises."""

    def record(self, record: gpb.AuditRecord) -> None: ...

    def close(self) -> None: ...


def _fields(record: gpb.AuditRecord) -> dict[str, Any]:
    return {"account": peers.printable(record.account), "address": peers.printable(record.address),
            "action": record.action, "reference": peers.printable(record.reference, 256),
            "result": record.result, "detail": peers.printable(record.detail, 256)}


class LoggedAudit:
    """No metadata service configured: every record is a log line."""

    def __init__(self) -> None:
        log.warning("WHARF_METADATA_ADDR is not set: admin logins and changes are written to this log only, "
                    "not to the audit log")

    def record(self, record: gpb.AuditRecord) -> None:
        log.info("audit", extra={"fields": _fields(record)})

    def close(self) -> None:
        return None


class SentAudit:
    """Sends records to the metadata service's RecordAudit from a background thread."""

    def __init__(self, target: str, token: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = gpb_grpc.GovernanceStub(authenticated_channel(self._channel, token))
        self._queue: queue.Queue[gpb.AuditRecord | None] = queue.Queue(QUEUE_MAX)
        self._dropped = 0
        self._thread = threading.Thread(target=self._forever, daemon=True, name="audit")
        self._thread.start()

    def record(self, record: gpb.AuditRecord) -> None:
        if not record.at_ms:
            record.at_ms = int(time.time() * 1000)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("audit records dropped: the metadata service is not taking them fast enough",
                            extra={"fields": {"dropped": self._dropped}})

    def close(self) -> None:
        """Sends what is queued (for at most CLOSE_WAIT_S) and closes the channel."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=CLOSE_WAIT_S)
        self._thread.join(CLOSE_WAIT_S + DEADLINE_S)
        self._channel.close()

    def _forever(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            gather_until = time.monotonic() + GATHER_S
            while len(batch) < BATCH:
                try:
                    item = self._queue.get(timeout=max(gather_until - time.monotonic(), 0))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._send(batch)

    def _send(self, batch: list[gpb.AuditRecord]) -> None:
        request_id = batch[0].request_id or "auth-audit"
        try:
            self._stub.RecordAudit(gpb.RecordAuditRequest(records=batch), timeout=DEADLINE_S,
                                   metadata=((REQUEST_ID_KEY, request_id),))
        except grpc.RpcError as err:
            error = from_rpc_error(err)
            log.warning("audit records not recorded", extra={"fields": {"records": len(batch), "error": error.code,
                                                                        "message": error.message[:200]}})
            for record in batch:
                log.info("audit", extra={"fields": _fields(record)})


def audit_for(metadata_addr: str, token: str) -> AuditTrail:
    """The trail of this service: sent to the metadata service, or (no address) logged."""
    return SentAudit(metadata_addr, token) if metadata_addr else LoggedAudit()
