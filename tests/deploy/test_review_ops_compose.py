"""deploy/compose.yaml as a first-time user runs it (hostile review of the deploy files): the
registry speaks plain HTTP and takes passwords at /token, so by default it is published on this
machine's loopback only, as the Prometheus and Grafana of the observability profile are."""

from __future__ import annotations

from typing import Any

from tests.deploy.deployfiles import compose_model


def _published(model: dict[str, Any], service: str) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each port a service publishes ("" address:
    every interface, as Docker reads a short form without one)."""
    found = []
    for entry in model["services"][service].get("ports", []):
        parts = str(entry).rsplit(":", 2)
        if len(parts) == 2:
            parts = ["", *parts]
        found.append((parts[0], parts[1], parts[2]))
    return found


def test_nothing_is_published_beyond_loopback_by_default() -> None:
    model = compose_model({})
    for name in model["services"]:
        for address, _, _ in _published(model, name):
            assert address == "127.0.0.1", f"{name} is published on every interface by default"
    assert _published(model, "gateway") == [("127.0.0.1", "5000", "5000")]


def test_an_operator_may_publish_the_registry_on_an_address_or_every_interface() -> None:
    assert _published(compose_model({"WHARF_PUBLISHED_PORT": "0.0.0.0:5000"}), "gateway") == [
        ("0.0.0.0", "5000", "5000")]
    assert _published(compose_model({"WHARF_PUBLISHED_PORT": "127.0.0.1:15000"}), "gateway") == [
        ("127.0.0.1", "15000", "5000")]
