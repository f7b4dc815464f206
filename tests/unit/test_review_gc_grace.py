"""Hostile review (2026-12-03): `wharf-gc --grace` takes only what a run can use."""

from __future__ import annotations

import pytest

from services.gc.__main__ import main


@pytest.mark.parametrize("grace", ["nan", "inf", "1e20", "-1"])
def test_a_grace_that_is_no_duration_is_a_usage_error(grace: str, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN, infinity and 1e20 s went on to a run that ended in a traceback (`cannot convert float
    NaN to integer`, `Value out of range` for the int64 of the metadata call)."""
    with pytest.raises(SystemExit) as stopped:
        main(["--grace", grace, "--dry-run"])
    assert stopped.value.code == 2
    assert "--grace must be a number of seconds" in capsys.readouterr().err
