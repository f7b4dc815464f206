"""The extension registry: built-ins found like any extension; a missing, broken or mismatched one
stops start-up with a message naming it (entry points faked here; the installed ones are real)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from typing import Any

import pytest

from services.blobstore import storage
from services.blobstore.storage.base import CheckedDriver
from services.blobstore.storage.filesystem import FilesystemDriver
from services.common import plugins
from services.events import sinks


def test_the_built_ins_are_registered_like_any_extension() -> None:
    names = {(i.group, i.name) for i in plugins.installed()}
    assert {("wharf.storage", "filesystem"), ("wharf.storage", "s3"), ("wharf.events", "webhook")} <= names
    assert storage.driver_class("filesystem") is FilesystemDriver
    assert sinks.sink_class("webhook") is sinks.WebhookSink


def _fake(monkeypatch: pytest.MonkeyPatch, group: str, name: str, target: str) -> None:
    real = importlib.metadata.entry_points
    fake = importlib.metadata.EntryPoint(name=name, value=target, group=group)

    def entry_points(**selection: Any) -> Any:
        found = list(real(**selection))
        return [*found, fake] if selection.get("group") == group else found
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def _module(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)


def test_a_missing_extension_names_what_is_installed() -> None:
    with pytest.raises(plugins.PluginError, match=r"no extension named .azure. is installed \(installed: .*filesystem"):
        storage.driver_class("azure")


def test_an_extension_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, "wharf.storage", "broken", "wharf_test_missing_module:Driver")
    with pytest.raises(plugins.PluginError, match=r"wharf.storage 'broken' \(wharf_test_missing_module:Driver.*cannot "
                                                   r"be imported: ModuleNotFoundError"):
        storage.driver_class("broken")


def test_an_extension_of_another_interface_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Future(FilesystemDriver):
        wharf_interface = 2
    _module(monkeypatch, "wharf_test_future", Driver=Future)
    _fake(monkeypatch, "wharf.storage", "future", "wharf_test_future:Driver")
    with pytest.raises(plugins.PluginError, match="implements interface version 2; this Wharf speaks 1"):
        storage.driver_class("future")


def test_an_extension_must_state_its_version_and_be_of_the_groups_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    _module(monkeypatch, "wharf_test_kinds", NotADriver=type("NotADriver", (), {"wharf_interface": 1}))
    _fake(monkeypatch, "wharf.storage", "notadriver", "wharf_test_kinds:NotADriver")
    with pytest.raises(plugins.PluginError, match="is not a StorageDriver subclass"):
        storage.driver_class("notadriver")
    with pytest.raises(ValueError, match="implements storage driver API"):
        CheckedDriver(object.__new__(type("Unversioned", (FilesystemDriver,), {"wharf_interface": None})))


def test_two_packages_claiming_one_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, "wharf.storage", "filesystem", "services.blobstore.storage.filesystem:FilesystemDriver")
    with pytest.raises(plugins.PluginError, match="registered by more than one package"):
        storage.driver_class("filesystem")


def test_base_registries_reads_references_as_docker_does() -> None:
    from services.api.admission import BaseRegistries, Candidate

    policy = BaseRegistries.from_options({"allow": ["registry.example.com/dockerhub", "GHCR.io"], "require": True})

    def verdict(base: str | None) -> str | None:
        annotations = {"org.opencontainers.image.base.name": base} if base is not None else {}
        return policy.admit(Candidate("team/app", "sha256:" + "0" * 64, "application/vnd.oci.image.manifest.v1+json",
                                      "", 10, ("v1",), annotations, 10, "", "carol"))

    for allowed in ("registry.example.com/dockerhub/library/alpine:3.20", "ghcr.io/org/tool@sha256:" + "1" * 64,
                    "registry.example.com/dockerhub/x:y@sha256:" + "2" * 64, "GHCR.IO/org/tool"):
        assert verdict(allowed) is None, allowed
    for refused in ("alpine", "alpine:3.20", "docker.io/library/alpine", "registry.example.com/other/x",
                    "registry.example.com:5000/dockerhub/x", "registry.example.com/dockerhubx/y",
                    "ghcr.io.evil.example/x", "ghcr.io:443/x"):
        message = verdict(refused)
        assert message and "is not from an allowed registry" in message, refused
    assert verdict(None) == "images here must name their base image (org.opencontainers.image.base.name)"
    assert BaseRegistries.from_options({"allow": ["docker.io"]}).admit(
        Candidate("a", "", "", "", 0, (), {"org.opencontainers.image.base.name": "alpine:3"}, 0, "", "")) is None
    with pytest.raises(ValueError):
        BaseRegistries.from_options({"allow": []})
