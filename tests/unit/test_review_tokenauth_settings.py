"""The auth service refuses settings that quietly turn a protection off (hostile review, token auth).

Measured on a running stack before the bounds: ``WHARF_LOGIN_WINDOW=0`` let 12 wrong admin
passwords in a row through unthrottled (Redis's ``EXPIRE key 0`` deleted each failure as it was
counted), and ``WHARF_TOKEN_TTL=-60`` signed every token already expired (every request 401).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.auth.settings import AuthSettings
from services.common.settings import problems


@pytest.mark.parametrize(("variable", "value"), [
    ("WHARF_LOGIN_WINDOW", "0"),         # no lockout at all
    ("WHARF_LOGIN_FAILURES", "0"),       # every account locked out
    ("WHARF_TOKEN_TTL", "-60"),          # every token born expired
    ("WHARF_TOKEN_TTL", "30"),           # under the spec's 60 s
    ("WHARF_TOKEN_TTL", "31536000"),     # a year: revocation would wait a year
    ("WHARF_REFRESH_TOKEN_TTL", "0"),    # EXPIRE 0: every refresh token deleted as it is issued
    ("WHARF_BCRYPT_ROUNDS", "3"),        # bcrypt refuses it at the first account creation
    ("WHARF_BCRYPT_ROUNDS", "40"),
    ("WHARF_AUTH_WORKERS", "0"),
    ("WHARF_KEY_PUBLISH_DELAY", "-1"),
])
def test_settings_that_turn_a_protection_off_are_refused(variable: str, value: str) -> None:
    found = problems(AuthSettings, {variable: value})
    assert len(found) == 1 and found[0].startswith(f"{variable}={value!r}: expected a number"), found


def test_the_defaults_and_the_documented_range_are_taken() -> None:
    assert problems(AuthSettings, {}) == []
    assert problems(AuthSettings, {"WHARF_TOKEN_TTL": "60", "WHARF_LOGIN_WINDOW": "1", "WHARF_LOGIN_FAILURES": "1",
                                   "WHARF_BCRYPT_ROUNDS": "4"}) == []
    assert problems(AuthSettings, {"WHARF_TOKEN_TTL": "86400"}) == []


def test_wharf_auth_stops_at_start_naming_the_setting(tmp_path: os.PathLike[str]) -> None:
    """The real program: one line, before it reads its secret or reaches Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env.update(WHARF_LOGIN_WINDOW="0", WHARF_AUTH_LISTEN="127.0.0.1:0")
    result = subprocess.run([sys.executable, "-m", "services.auth"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=str(tmp_path))
    assert result.returncode != 0
    assert "WHARF_LOGIN_WINDOW='0'" in result.stderr, result.stderr
