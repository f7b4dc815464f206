"""Settings are checked once, at start, with one message naming the variable and what it accepts;
a variable several services read has one field name and one default in each of them."""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from services.api.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.blobstore.settings import BlobStoreSettings
from services.common.settings import SettingsError, load
from services.metadata.settings import MetadataSettings
from services.stack.settings import StackSettings

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLASSES = (GatewaySettings, AuthSettings, BlobStoreSettings, MetadataSettings, StackSettings)


def test_a_shared_variable_has_one_name_and_one_default_everywhere() -> None:
    """The runner is compared by name only: its defaults may differ on purpose (its empty
    WHARF_REDIS_URL means "start a Redis", which it then hands to the services)."""
    names: dict[str, set[str]] = collections.defaultdict(set)
    defaults: dict[str, set[object]] = collections.defaultdict(set)
    for cls in CLASSES:
        for field in dataclasses.fields(cls):
            if "env" in field.metadata:
                names[field.metadata["env"]].add(field.name)
                if cls is not StackSettings:
                    defaults[field.metadata["env"]].add(field.default)
    assert not {var: found for var, found in names.items() if len(found) > 1}
    assert not {var: found for var, found in defaults.items() if len(found) > 1}


@pytest.mark.parametrize(("cls", "environ", "message"), [
    (GatewaySettings, {"WHARF_AUTH": "tokn"}, "WHARF_AUTH='tokn': expected none or token"),
    (StackSettings, {"WHARF_AUTH": "Token"}, "WHARF_AUTH='Token': expected none or token"),
    (BlobStoreSettings, {"WHARF_STORAGE": "gcs"}, "WHARF_STORAGE='gcs': expected filesystem or s3"),
    (BlobStoreSettings, {"WHARF_STORAGE": "s3"}, "WHARF_STORAGE=s3 needs WHARF_S3_ENDPOINT"),
    (GatewaySettings, {"WHARF_TLS_KEY_FILE": "k.pem"}, "WHARF_TLS_CERT_FILE and WHARF_TLS_KEY_FILE go together"),
    (GatewaySettings, {"WHARF_PORT": "eighty"}, "WHARF_PORT='eighty': expected a number"),
    # A read message must fit gRPC's 8 MiB limit, and a tiny one would cost a message per few bytes.
    (BlobStoreSettings, {"WHARF_READ_CHUNK": "16777216"},
     "WHARF_READ_CHUNK='16777216': expected a number from 65536 to 4194304"),
    (BlobStoreSettings, {"WHARF_READ_CHUNK": "0"}, "WHARF_READ_CHUNK='0': expected a number from 65536 to 4194304"),
])
def test_a_bad_value_is_refused_with_one_message(cls: type, environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load(cls, environ)


def test_the_runner_refuses_a_bad_setting_before_it_starts_anything(tmp_path: pathlib.Path) -> None:
    """Any service's bad value stops `make run` at once (it used to start the others and let one crash)."""
    env = {**os.environ, "WHARF_DATA_DIR": str(tmp_path), "WHARF_STORAGE": "gcs"}
    result = subprocess.run([sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("wharf-stack: WHARF_STORAGE='gcs': expected filesystem or s3, or the name of an "
                                     "installed storage extension (wharf-admin plugins)")
    assert not (tmp_path / "redis").exists()  # nothing was started


def _numbers() -> list[tuple[type, str, str]]:
    from services.events.settings import EventsSettings
    from services.gc.settings import GcSettings

    return [(cls, field.metadata["env"], str(field.type)) for cls in (*CLASSES, EventsSettings, GcSettings)
            for field in dataclasses.fields(cls) if "env" in field.metadata and field.type in ("int", "float")]


@pytest.mark.parametrize(("cls", "variable", "kind"), _numbers())
def test_every_number_is_finite_and_bounded_below(cls: type, variable: str, kind: str) -> None:
    """NaN passed every bound (each comparison with it is false), "inf" was an endless timeout,
    and a negative count or timeout (WHARF_GATEWAY_WORKERS=-5, WHARF_IDLE_TIMEOUT=-5,
    WHARF_MAX_BODY_BYTES=-5) was taken as it came: each is refused at start now."""
    for bad in ("nan", "inf", "-inf", "-5") if kind == "float" else ("-5",):
        with pytest.raises(SettingsError, match=f"{variable}='{bad}': expected a"):
            load(cls, {variable: bad})
