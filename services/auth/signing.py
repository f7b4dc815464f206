"""The ES256 signing keys: the newest signs, older ones verify until their tokens expire.

Keys live as PEM files in one directory (a volume or a Kubernetes Secret shared
by every auth replica), named ``key-<activation unix time>.pem``. Rotation
writes a key that is published at once but signs only after a delay longer
than the gateways' key refresh interval, so every gateway knows a key before
the first token it signs arrives. A key is dropped once its successor has been
active for longer than the longest token lifetime, so no valid token loses its key.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import os
import pathlib
import re
import tempfile
import threading
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
_NAME_RE = re.compile(r"^key-(\d+)\.pem$")


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


class KeyRing:
    def __init__(self, directory: pathlib.Path, token_lifetime: int, publish_delay: int = 0) -> None:
        self._dir = directory
        self._lifetime = token_lifetime
        self._publish_delay = publish_delay
        self._lock = threading.Lock()
        self._dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        if not self._load():
            self.rotate(delay=0)

    def _load(self) -> list[SigningKey]:
        keys: list[SigningKey] = []
        for path in self._dir.iterdir():
            found = _NAME_RE.match(path.name)
            if not found:
                continue
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path}: not an EC private key")
            keys.append(SigningKey(key_id(private.public_key()), int(found.group(1)), private))
        return sorted(keys, key=lambda k: k.created_at)

    def rotate(self, delay: int | None = None) -> SigningKey:
        """Adds a key that starts signing after ``delay`` seconds (default: the publish delay)."""
        with self._lock:
            private = ec.generate_private_key(ec.SECP256R1())
            start = int(time.time()) + (self._publish_delay if delay is None else delay)
            created = max([start, *[k.created_at + 1 for k in self._load()]])
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._dir / f"key-{created}.pem")
            self.prune()
            return SigningKey(key_id(private.public_key()), created, private)

    def current(self) -> SigningKey:
        """The newest active key."""
        now = time.time()
        keys = self._load()
        active = [k for k in keys if k.created_at <= now]
        return active[-1] if active else keys[0]

    def verifying(self) -> list[SigningKey]:
        """Pending keys, the current key and every older key whose tokens may still be valid."""
        keys = self._load()
        now = time.time()
        current = self.current()
        keep = [k for k in keys if k.created_at >= current.created_at]
        for older, successor in itertools.pairwise(keys):
            if older.created_at < current.created_at and now - successor.created_at <= self._lifetime + 60:
                keep.append(older)
        return sorted(keep, key=lambda k: k.created_at)

    def prune(self) -> None:
        keep = {k.created_at for k in self.verifying()}
        for key in self._load():
            if key.created_at not in keep:
                (self._dir / f"key-{key.created_at}.pem").unlink(missing_ok=True)
