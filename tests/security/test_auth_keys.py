"""Signing keys shared by several auth replicas: rotating, pruning and issuing at once must
neither fail a token request nor lose a key, and issuing must not re-read every key file."""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.auth import signing, tokens
from services.auth.signing import KeyRing, key_id

LIFETIME = 1


def pem_of(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def plant(directory: pathlib.Path, created_at: int, pem: bytes) -> None:
    """A key file as another replica writes it: complete, then renamed into place."""
    tmp = directory / f".plant-{created_at}-{threading.get_ident()}"
    tmp.write_bytes(pem)
    os.replace(tmp, directory / f"key-{created_at}.pem")


def kid_on_disk(directory: pathlib.Path, created_at: int) -> str | None:
    try:
        private = serialization.load_pem_private_key((directory / f"key-{created_at}.pem").read_bytes(), None)
    except FileNotFoundError:
        return None
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return key_id(private.public_key())


def run_threads(*targets: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # collected and asserted on by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def test_replicas_rotating_and_pruning_while_a_third_issues(tmp_path: pathlib.Path) -> None:
    """prune() on one replica deleted files another was reading (FileNotFoundError: a 500), and
    two replicas rotating in the same second wrote the same file name (one key lost)."""
    old_pem = pem_of(ec.generate_private_key(ec.SECP256R1()))
    long_ago = int(time.time()) - 100_000
    for i in range(40):
        plant(tmp_path, long_ago + i, old_pem)
    issuer = KeyRing(tmp_path, LIFETIME, reload_interval=0)
    gateway = KeyRing(tmp_path, LIFETIME, reload_interval=0)  # what ListPublicKeys would publish
    replicas = [KeyRing(tmp_path, LIFETIME, reload_interval=0) for _ in range(2)]
    rounds = 25
    barrier = threading.Barrier(len(replicas))
    rotated: list[signing.SigningKey] = []
    stop = threading.Event()
    issued = 0

    def rotator(ring: KeyRing) -> Callable[[], None]:
        def run() -> None:
            for i in range(rounds):
                barrier.wait(30)
                rotated.append(ring.rotate(delay=0))
                # Fresh prey for the next prune: older than every other key, so never the
                # successor of a key that signed a moment ago.
                plant(tmp_path, long_ago - 1000 - rounds * replicas.index(ring) - i, old_pem)
                ring.prune()
        return run

    def issue() -> None:
        nonlocal issued
        while not stop.is_set() or issued == 0:
            token = tokens.issue(issuer, "wharf-auth", "wharf", "alice", [], 300).token
            kid = jwt.get_unverified_header(token)["kid"]
            published = {k.kid: k for k in gateway.verifying()}
            assert kid in published, "a token was signed with a key that is not published"
            jwt.decode(token, published[kid].private_key.public_key(), algorithms=["ES256"], audience="wharf")
            issued += 1

    def rotators() -> None:
        errors = run_threads(*(rotator(r) for r in replicas))
        stop.set()
        if errors:
            raise errors[0]

    errors = run_threads(rotators, issue, issue)
    assert not errors, errors
    assert issued > 0 and len(rotated) == rounds * len(replicas)
    # No rotation overwrote another: every key a rotation returned is on disk as itself.
    assert len({k.created_at for k in rotated}) == len(rotated)
    for key in rotated:
        assert kid_on_disk(tmp_path, key.created_at) == key.kid


def test_a_key_file_vanishing_between_listing_and_reading_is_skipped(tmp_path: pathlib.Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing(tmp_path, LIFETIME, reload_interval=0)
    doomed = int(time.time()) - 50_000
    plant(tmp_path, doomed, pem_of(ec.generate_private_key(ec.SECP256R1())))
    real_scandir = os.scandir

    class PruningScandir:
        """os.scandir, with another replica's prune() deleting the old key right after the listing."""

        def __init__(self, path: Any) -> None:
            self._entries = list(real_scandir(path))
            (tmp_path / f"key-{doomed}.pem").unlink(missing_ok=True)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            return iter(self._entries)

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(signing.os, "scandir", PruningScandir)
    assert doomed not in {k.created_at for k in ring.verifying()}
    assert tokens.issue(ring, "wharf-auth", "wharf", "alice", [], 300).token


def test_issuing_does_not_parse_the_key_files_again(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing(tmp_path, LIFETIME)
    ring.rotate(delay=0)
    real = serialization.load_pem_private_key
    parsed: list[int] = []

    def counting(data: bytes, password: bytes | None, *args: Any, **kwargs: Any) -> Any:
        parsed.append(1)
        return real(data, password, *args, **kwargs)

    monkeypatch.setattr(serialization, "load_pem_private_key", counting)
    for _ in range(200):
        tokens.issue(ring, "wharf-auth", "wharf", "alice", [], 300)
        ring.verifying()
    assert len(parsed) == 0
    # A key added by another replica is still picked up, within the reload interval.
    new = KeyRing(tmp_path, LIFETIME).rotate(delay=0)
    parsed.clear()
    deadline = time.monotonic() + 5
    while new.kid not in {k.kid for k in ring.verifying()}:
        assert time.monotonic() < deadline, "another replica's key was never seen"
        time.sleep(0.05)
    assert len(parsed) == 1


def test_a_bad_key_file_fails_the_start_but_not_running_replicas(tmp_path: pathlib.Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    ring = KeyRing(tmp_path, LIFETIME, reload_interval=0)
    (tmp_path / "key-1.pem").write_text("not a key")
    with caplog.at_level(logging.ERROR, logger="wharf.auth"):
        for _ in range(5):
            assert tokens.issue(ring, "wharf-auth", "wharf", "alice", [], 300).token
    assert [r.getMessage() for r in caplog.records].count("signing key file ignored") == 1
    with pytest.raises(ValueError, match=r"key-1\.pem"):
        KeyRing(tmp_path, LIFETIME)
