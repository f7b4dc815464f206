"""wharf_client: talk to any OCI Distribution registry, and the ``wharf`` command line.

Quick start::

    from wharf_client import Client, parse_reference

    with Client() as client:                       # credentials from the docker config.json
        ref = parse_reference("localhost:5000/app:1.0")
        repo = client.repository(ref)
        manifest = repo.get_manifest(ref.identifier)
        print(manifest.digest, [layer.digest for layer in manifest.layers])

Everything takes its settings as arguments (:class:`ClientOptions`); nothing is
read from globals, and a :class:`Client` may be shared by threads.
"""

from wharf_client.artifact import ArtifactFile, pull_artifact, push_artifact, put_referrer
from wharf_client.auth.credentials import Credential, CredentialStore, DockerConfig, StaticCredentials
from wharf_client.copy import CopyProgress, CopyResult, copy_image
from wharf_client.dockerarchive import DockerArchiveSource, DockerArchiveTarget
from wharf_client.errors import (
    AuthenticationError,
    DigestMismatch,
    FormatError,
    InvalidReference,
    NotFoundError,
    PlatformNotFound,
    RegistryError,
    TransportError,
    UnsupportedOperation,
    WharfError,
)
from wharf_client.layout import OciLayout
from wharf_client.manifest import Descriptor, Manifest
from wharf_client.options import ClientOptions, RegistryOptions
from wharf_client.platform import Platform
from wharf_client.platform import parse as parse_platform
from wharf_client.reference import Reference
from wharf_client.reference import parse as parse_reference
from wharf_client.registry import Client, Repository
from wharf_client.stores import LayoutImageSource, LayoutImageTarget, RegistryImageSource, RegistryImageTarget
from wharf_client.upload import Outcome, push_blob

__all__ = [
    "ArtifactFile", "AuthenticationError", "Client", "ClientOptions", "CopyProgress", "CopyResult", "Credential",
    "CredentialStore", "Descriptor", "DigestMismatch", "DockerArchiveSource", "DockerArchiveTarget", "DockerConfig",
    "FormatError", "InvalidReference", "LayoutImageSource", "LayoutImageTarget", "Manifest", "NotFoundError",
    "OciLayout", "Outcome", "Platform", "PlatformNotFound", "Reference", "RegistryError", "RegistryImageSource",
    "RegistryImageTarget", "RegistryOptions", "Repository", "StaticCredentials", "TransportError",
    "UnsupportedOperation", "WharfError",
    "copy_image", "parse_platform", "parse_reference", "pull_artifact", "push_artifact", "push_blob", "put_referrer",
]
