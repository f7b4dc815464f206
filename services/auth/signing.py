"""The ES256 signing keys: the newest signs, older ones verify until their tokens expire.

Keys live as PEM files in one directory (a volume or a Kubernetes Secret shared
by every auth replica), named ``key-<activation unix time>.pem``. Rotation
writes a key that is published at once but signs only after a delay longer
than the gateways' key refresh interval, so every gateway knows a key before
the first token it signs arrives. A key is dropped once its successor has been
active for longer than the longest token lifetime, so no valid token loses its key.

Several replicas share the directory, so each one tolerates the others: keys are cached and
the directory is listed again at most once a ``reload_interval`` (a token issue used to
parse every key file); a file pruned by another replica between listing and reading is
skipped, not a 500; and a new key file is published with ``os.link`` of a complete temporary
file, which fails instead of overwriting when another replica just took the same name, so
the rotation retries with the next second's name and neither key is lost.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import itertools
import logging
import os
import pathlib
import re
import tempfile
import threading
import time

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.errors import UNAVAILABLE, RegistryError

ALGORITHM = "ES256"
_NAME_RE = re.compile(r"^key-(\d+)\.pem\Z")
# Key files are few and change rarely: listing the directory once a second is plenty.
RELOAD_INTERVAL = 1.0
# Names tried when rotating replicas collide, before giving up.
_NAME_ATTEMPTS = 100
# errno values of link() on filesystems without hard links (FAT, some FUSE and SMB mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
log = logging.getLogger("wharf.auth")


@dataclasses.dataclass(frozen=True)
class SigningKey:
    kid: str
    created_at: int
    private_key: ec.EllipticCurvePrivateKey

    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """A stable id derived from the public key (base32 of a SHA-256 prefix, in 4-char groups)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i:i + 4] for i in range(0, 48, 4))


def _create_exclusive(path: pathlib.Path, pem: bytes) -> bool:
    """Fallback without hard links: create ``path`` only if it does not exist (False if it
    does). Readers skip the file while it is still empty and re-read it once it changes."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return True


class KeyRing:
    def __init__(self, directory: pathlib.Path, token_lifetime: int, publish_delay: int = 0,
                 reload_interval: float = RELOAD_INTERVAL) -> None:
        self._dir = directory
        self._lifetime = token_lifetime
        self._publish_delay = publish_delay
        self._reload_interval = reload_interval
        self._rotate_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        # Parsed keys by (file name, inode, mtime, size): a file is parsed again only when it changes.
        self._parsed: dict[tuple[str, int, int, int], SigningKey] = {}
        self._bad: set[tuple[str, int, int, int]] = set()
        self._keys: list[SigningKey] = []
        self._listed_at = float("-inf")
        self._dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        # Strict at start: a key file that does not parse is a misconfiguration to report now.
        if not self._load(fresh=True, strict=True):
            self.rotate(delay=0)

    def _load(self, fresh: bool = False, strict: bool = False) -> list[SigningKey]:
        """The keys, oldest first, from the cache unless it is older than the reload interval."""
        with self._cache_lock:
            now = time.monotonic()
            if fresh or now - self._listed_at >= self._reload_interval:
                self._keys = self._scan(strict)
                self._listed_at = now
            return self._keys

    def _scan(self, strict: bool) -> list[SigningKey]:
        parsed: dict[tuple[str, int, int, int], SigningKey] = {}
        seen: set[tuple[str, int, int, int]] = set()
        with os.scandir(self._dir) as entries:
            for entry in entries:
                found = _NAME_RE.match(entry.name)
                if not found:
                    continue
                try:
                    stat = entry.stat()  # follows symbolic links, as Kubernetes Secret volumes use them
                    ident = (entry.name, stat.st_ino, stat.st_mtime_ns, stat.st_size)
                    seen.add(ident)
                    key = self._parsed.get(ident) or self._read(entry.path, int(found.group(1)), ident, strict)
                except FileNotFoundError:
                    continue  # pruned by another replica since the listing
                if key is not None:
                    parsed[ident] = key
        self._parsed = parsed
        self._bad &= seen
        return sorted(parsed.values(), key=lambda k: k.created_at)

    def _read(self, path: str, created_at: int, ident: tuple[str, int, int, int],
              strict: bool) -> SigningKey | None:
        if ident in self._bad or ident[3] == 0:  # known bad, or empty: being written
            return None
        try:
            private = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise ValueError("not an EC private key")
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # not a key, encrypted, or another kind
            if strict:
                raise ValueError(f"{path}: {exc}") from None
            # At run time one bad file must not fail every token issue; report it once.
            self._bad.add(ident)
            log.error("signing key file ignored", extra={"fields": {"path": path, "error": str(exc)[:200]}})
            return None
        return SigningKey(key_id(private.public_key()), created_at, private)

    def rotate(self, delay: int | None = None) -> SigningKey:
        """Adds a key that starts signing after ``delay`` seconds (default: the publish delay)."""
        with self._rotate_lock:
            private = ec.generate_private_key(ec.SECP256R1())
            start = int(time.time()) + (self._publish_delay if delay is None else delay)
            created = max([start, *[k.created_at + 1 for k in self._load(fresh=True)]])
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            created = self._publish(pem, created)
            self._load(fresh=True)
            self.prune()
            return SigningKey(key_id(private.public_key()), created, private)

    def _publish(self, pem: bytes, created: int) -> int:
        """Writes ``pem`` as ``key-<created>.pem``, or the first later free name; returns the time used."""
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            for attempt in range(_NAME_ATTEMPTS):
                path = self._dir / f"key-{created + attempt}.pem"
                try:
                    # link() never replaces an existing file: another replica's key stays.
                    os.link(tmp, path)
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    if not _create_exclusive(path, pem):
                        continue
                return created + attempt
            raise RuntimeError(f"{self._dir}: no free key file name after key-{created}.pem")
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)

    def _some_keys(self) -> list[SigningKey]:
        keys = self._load() or self._load(fresh=True)
        if not keys:  # someone emptied the shared directory: a 503, not an IndexError's 500
            raise RegistryError(UNAVAILABLE, "no signing key: the key directory is empty")
        return keys

    def current(self) -> SigningKey:
        """The newest active key."""
        return self._current_of(self._some_keys(), time.time())

    @staticmethod
    def _current_of(keys: list[SigningKey], now: float) -> SigningKey:
        active = [k for k in keys if k.created_at <= now]
        return active[-1] if active else keys[0]

    def verifying(self) -> list[SigningKey]:
        """Pending keys, the current key and every older key whose tokens may still be valid."""
        keys = self._some_keys()
        obsolete = {k.created_at for k in self._obsolete(keys, time.time())}
        return [k for k in keys if k.created_at not in obsolete]

    def prune(self) -> None:
        """Deletes the keys no valid token can need any more.

        Decided on one listing and only ever for keys older than the current one: deciding what
        to *keep* on one listing and deleting everything else on a second one deleted a key
        another replica had just rotated in between.
        """
        for key in self._obsolete(self._some_keys(), time.time()):
            (self._dir / f"key-{key.created_at}.pem").unlink(missing_ok=True)

    def _obsolete(self, keys: list[SigningKey], now: float) -> list[SigningKey]:
        """Keys older than the current one whose successor has signed for longer than a token lives."""
        current = self._current_of(keys, now)
        return [older for older, successor in itertools.pairwise(keys)
                if older.created_at < current.created_at and now - successor.created_at > self._lifetime + 60]
