"""The gateway's listen queue: the kernel's cap unless configured (services/api/worker.py)."""

from __future__ import annotations

import pathlib

from services.api.worker import listen_backlog


def test_a_configured_queue_is_taken_as_it_is() -> None:
    assert listen_backlog(512, "/nonexistent") == 512


def test_by_default_the_kernels_cap_never_below_gunicorns_default(tmp_path: pathlib.Path) -> None:
    cap = tmp_path / "somaxconn"
    cap.write_text("65535\n")
    assert listen_backlog(0, str(cap)) == 65535
    cap.write_text("128\n")
    assert listen_backlog(0, str(cap)) == 2048  # what gunicorn asked for before; the kernel caps it anyway
    cap.write_text("garbage")
    assert listen_backlog(0, str(cap)) == 4096
    assert listen_backlog(0, str(tmp_path / "missing")) == 4096
