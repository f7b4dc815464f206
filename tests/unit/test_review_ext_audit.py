"""A hostile review of `wharf-admin audit`'s text lines: a failed login's account is whatever the
client typed (spaces and parentheses included), a refused mount's source too, and neither may pass
for another column of the line (services/maintenance/audit_cli.py)."""

from __future__ import annotations

from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.maintenance.audit_cli import record_text

DIGEST = "sha256:" + "b" * 64


def test_a_typed_account_cannot_pass_for_a_push_in_the_text_line() -> None:
    # GET /token with Basic credentials whose user name is this (no colon: Basic splits there).
    forged = "alice (10.0.0.5)  push  prod/app  ok 201  via gateway"
    line = record_text(gpb.AuditRecord(at_ms=1_714_557_600_123, account=forged, address="192.0.2.7",
                                       action="login", result="UNAUTHORIZED", status=401, via="gateway"))
    # Before: "2024-...Z  alice (10.0.0.5)  push  prod/app  ok 201  via gateway (192.0.2.7)  login ..."
    assert line == ('2024-05-01T10:00:00.123Z  "alice (10.0.0.5)  push  prod/app  ok 201  via gateway" '
                    '(192.0.2.7)  login  -  UNAUTHORIZED 401  via gateway')


def test_a_refused_mounts_source_cannot_close_its_brackets() -> None:
    line = record_text(gpb.AuditRecord(at_ms=1_714_557_600_123, account="bob", address="192.0.2.7", action="mount",
                                       repository="bob/app", reference=DIGEST, result="NAME_INVALID", status=400,
                                       detail="from x]  via gateway", via="gateway"))
    assert line.endswith('NAME_INVALID 400  ["from x]  via gateway"]  via gateway')


def test_plain_records_read_as_before() -> None:
    line = record_text(gpb.AuditRecord(at_ms=1_714_557_600_123, account="robot-ci", address="2001:db8::1",
                                       action="grant", reference="team/**", result="ok", detail="web UI", via="auth"))
    assert line == "2024-05-01T10:00:00.123Z  robot-ci (2001:db8::1)  grant  team/**  ok  [web UI]  via auth"
