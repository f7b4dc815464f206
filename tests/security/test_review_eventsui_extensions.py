"""A hostile review of the extension mechanism: an installed extension whose factory
(``from_endpoint``, ``from_options``) raises something other than ValueError or builds something
other than an instance of its interface, and one whose import calls ``sys.exit``.

docs/extending.md promises that a broken extension stops the service before it serves with one
line naming the group and the name. Each case runs the real service process against an extension
installed as a package would be (a dist-info with entry points on PYTHONPATH).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

_MODULE = '''
import sys

from services.api.admission import AdmissionPolicy
from services.auth.identity import IdentityBackend
from services.blobstore.storage.base import StorageDriver
from services.events.sinks import EventSink


class MissingOption(EventSink):
    wharf_interface = 1

    @classmethod
    def from_endpoint(cls, endpoint, source):
        return cls(endpoint.options["queue"])  # KeyError: the option is not there

    def __init__(self, queue):
        self.queue = queue

    def send(self, events):
        return ""


class Nothing(EventSink):
    wharf_interface = 1

    @classmethod
    def from_endpoint(cls, endpoint, source):
        return None

    def send(self, events):
        return ""


class PolicyMissingOption(AdmissionPolicy):
    wharf_interface = 1

    @classmethod
    def from_options(cls, options):
        return cls(options["rules"])

    def __init__(self, rules):
        self.rules = rules

    def admit(self, candidate):
        return None


class BackendMissingOption(IdentityBackend):
    wharf_interface = 1

    @classmethod
    def from_options(cls, options, context):
        return cls(options["server"])

    def __init__(self, server):
        self.server = server


class DriverMissingOption(StorageDriver):
    wharf_interface = 1

    @classmethod
    def from_settings(cls, settings, options):
        return options["bucket"]


class PolicyNothing(AdmissionPolicy):
    wharf_interface = 1

    @classmethod
    def from_options(cls, options):
        return None

    def admit(self, candidate):
        return None
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An installed package with broken extensions of two groups."""
    package = tmp_path_factory.mktemp("site")
    info = package / "wharf_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wharf-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[wharf.events]\nkeyerror = wharf_broken:MissingOption\nnothing = wharf_broken:Nothing\n"
        "exits = wharf_broken_exits:Sink\n"
        "[wharf.admission]\nkeyerror = wharf_broken:PolicyMissingOption\nnothing = wharf_broken:PolicyNothing\n"
        "[wharf.identity]\nkeyerror = wharf_broken:BackendMissingOption\n"
        "[wharf.storage]\nkeyerror = wharf_broken:DriverMissingOption\n")
    (package / "wharf_broken.py").write_text(_MODULE)
    (package / "wharf_broken_exits.py").write_text("import sys\nsys.exit('the licence server said no')\n")
    (package / "token").write_text("t" * 40)
    return package


def _run(site: pathlib.Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
               "WHARF_INTERNAL_TOKEN_FILE": str(site / "token"), **env}
    return subprocess.run([sys.executable, "-m", *argv], env=environ, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def _first_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.strip().splitlines()[0] if done.stderr.strip() else ""


@pytest.mark.parametrize(("sink", "message"), [
    ("keyerror", "wharf-events: wharf.events 'keyerror' (endpoint audit) failed to build: KeyError: 'queue'"),
    ("nothing", "wharf-events: wharf.events 'nothing' (endpoint audit) built NoneType, not an EventSink"),
    ("exits", "wharf-events: wharf.events 'exits' (wharf_broken_exits:Sink, from wharf-broken 0.1) cannot be "
              "imported: SystemExit: the licence server said no"),
])
def test_a_sink_that_cannot_be_built_stops_the_service_in_one_line(
        site: pathlib.Path, tmp_path: pathlib.Path, sink: str, message: str) -> None:
    """Before: a KeyError in from_endpoint, or a from_endpoint answering None, stopped wharf-events
    with a traceback (``AttributeError: 'NoneType' object has no attribute 'close'`` for the latter);
    an import calling sys.exit stopped it with the extension's text alone, naming nothing."""
    (tmp_path / "events.yaml").write_text(f"endpoints:\n  - name: audit\n    sink: {sink}\n")
    done = _run(site, "services.events", WHARF_EVENTS_FILE=str(tmp_path / "events.yaml"),
                WHARF_REDIS_URL="redis://127.0.0.1:1/0", WHARF_EVENTS_LISTEN="127.0.0.1:0")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == message


@pytest.mark.parametrize(("policy", "message"), [
    ("keyerror", "wharf.admission 'keyerror' (admission.policies[0]) failed to build: KeyError: 'rules'"),
    ("nothing", "wharf.admission 'nothing' (admission.policies[0]) built NoneType, not an AdmissionPolicy"),
])
def test_an_admission_policy_that_cannot_be_built_stops_the_gateway_in_one_line(
        site: pathlib.Path, tmp_path: pathlib.Path, policy: str, message: str) -> None:
    """Before: a KeyError in from_options stopped the gateway with a traceback; a from_options
    answering None let it start and serve, refusing every push at run time ("failed")."""
    (tmp_path / "admission.yaml").write_text(f"policies:\n  - name: {policy}\n")
    # The port is never bound: the gateway stops before it serves.
    done = _run(site, "services.api", WHARF_ADMISSION_FILE=str(tmp_path / "admission.yaml"), WHARF_PORT="24050")
    assert done.returncode != 0
    assert _first_line(done) == f"wharf-gateway: {message}"
    assert "KeyError" not in done.stderr.replace(message, "")  # no traceback of the extension's error
    # make run's settings check builds the policies too, so it says so before anything starts.
    checked = _run(site, "services.stack", "--check", WHARF_ADMISSION_FILE=str(tmp_path / "admission.yaml"))
    assert checked.returncode != 0
    assert message in checked.stdout + checked.stderr


def test_an_identity_backend_that_cannot_be_built_stops_the_check_in_one_line(
        site: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Before: a KeyError in an identity backend's from_options was a traceback in `wharf-stack
    --check` (and at the auth service's start)."""
    (tmp_path / "identity.yaml").write_text("backends:\n  - name: keyerror\n")
    checked = _run(site, "services.stack", "--check", WHARF_AUTH="token",
                   WHARF_IDENTITY_FILE=str(tmp_path / "identity.yaml"))
    assert checked.returncode != 0
    assert "wharf.identity 'keyerror' (identity.backends[0]) failed to build: KeyError: 'server'" in \
        checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr


def test_a_storage_driver_that_cannot_be_built_stops_the_blob_store_in_one_line(site: pathlib.Path,
                                                                                 tmp_path: pathlib.Path) -> None:
    done = _run(site, "services.blobstore", WHARF_STORAGE="keyerror", WHARF_BLOBSTORE_LISTEN="127.0.0.1:0",
                WHARF_STORAGE_ROOT=str(tmp_path))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        "wharf-blobstore: wharf.storage 'keyerror' failed to build: KeyError: 'bucket'"
    # wharf-gc builds the same driver: the same line, not a traceback.
    collected = _run(site, "services.gc", "--dry-run", WHARF_STORAGE="keyerror", WHARF_STORAGE_ROOT=str(tmp_path),
                     WHARF_REDIS_URL="redis://127.0.0.1:1/0")
    assert collected.returncode == 2 and "Traceback" not in collected.stderr
    assert collected.stderr.strip().splitlines()[-1] == \
        "wharf-gc: WHARF_STORAGE=keyerror: wharf.storage 'keyerror' failed to build: KeyError: 'bucket'"
