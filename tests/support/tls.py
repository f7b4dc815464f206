"""A self-signed certificate for a stack that serves HTTPS itself (WHARF_TLS_CERT_FILE)."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def certificate(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) as ``directory``/ca.crt, and its key,
    outside ``directory`` (skopeo takes any *.key in a certificate directory for a client key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wharf test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    private = directory.parent / f"{directory.name}-private"
    private.mkdir(exist_ok=True)
    cert_file, key_file = directory / "ca.crt", private / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def tls_env(directory: pathlib.Path) -> dict[str, str]:
    """The stack's settings for the certificate ``certificate(directory)`` made."""
    return {"WHARF_TLS_CERT_FILE": str(directory / "ca.crt"),
            "WHARF_TLS_KEY_FILE": str(directory.parent / f"{directory.name}-private" / "server.key")}
