"""Platforms (``linux/arm64/v8``) and how an index entry is matched against one.

Matching follows containerd's rules so ``--platform`` picks the same manifest
here as in ``docker pull --platform``: architecture aliases are normalized, and
a missing variant matches the architecture's default variant (arm64 means v8).
"""

from __future__ import annotations

import dataclasses
import platform as _host
from collections.abc import Mapping
from typing import Any

from wharf_client.errors import InvalidReference

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
                 "i386": "386", "i686": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        if self.variant:
            text += f"/{self.variant}"
        return text + (f":{self.os_version}" if self.os_version else "")

    def normalized(self) -> Platform:
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = self.variant.lower()
        if arch == "arm64" and variant == "8":
            variant = "v8"
        if arch == "arm" and variant in ("5", "6", "7", "8"):
            variant = f"v{variant}"
        return Platform(self.os.lower(), arch, variant, self.os_version)

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (an index entry's platform) satisfies this requested platform."""
        want, have = self.normalized(), other.normalized()
        if want.os != have.os or want.architecture != have.architecture:
            return False
        if want.os_version and have.os_version and want.os_version != have.os_version:
            return False
        default = _DEFAULT_VARIANT.get(want.architecture, "")
        if not want.variant:
            return not default or have.variant in ("", default)
        return want.variant == (have.variant or default)

    def to_json(self) -> dict[str, str]:
        value = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            value["variant"] = self.variant
        if self.os_version:
            value["os.version"] = self.os_version
        return value


def parse(text: str) -> Platform:
    """``os/arch[/variant][:os_version]``, as docker's ``--platform`` takes it."""
    spec, _, os_version = text.strip().partition(":")
    parts = spec.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidReference(f"invalid platform {text!r}: expected os/arch[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "", os_version)


def from_json(value: Mapping[str, Any] | None) -> Platform | None:
    if not isinstance(value, Mapping) or not value.get("os") or not value.get("architecture"):
        return None
    return Platform(str(value["os"]), str(value["architecture"]), str(value.get("variant") or ""),
                    str(value.get("os.version") or ""))


def host() -> Platform:
    """The platform this process runs on: what a single-platform pull picks by default."""
    system = _host.system().lower() or "linux"
    if system == "darwin":
        system = "linux"  # images for macOS hosts are linux images run in a VM
    return Platform(system, _host.machine() or "amd64").normalized()
