"""The events section: Distribution's endpoint shape carries over; every mistake is one line naming
the file and the line; secrets stay out of messages and reprs. And the delivery bodies."""

from __future__ import annotations

import json
import pathlib

import pytest

from services.events import envelope
from services.events.config import Endpoint, EventsError, load, problems
from services.events.envelope import Event, Source

DISTRIBUTION = """\
endpoints:
  - name: alistener
    url: https://mylistener.example.com/event
    headers:
      Authorization: [Bearer <your token>]
    timeout: 500ms
    threshold: 5
    backoff: 1s
    ignoredmediatypes:
      - application/octet-stream
    ignore:
      mediatypes: [application/vnd.oci.image.config.v1+json]
      actions: [pull]
"""


def _write(tmp_path: pathlib.Path, text: str, name: str = "events.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_distribution_configuration_carries_over(tmp_path: pathlib.Path) -> None:
    events = load({"WHARF_EVENTS_FILE": _write(tmp_path, DISTRIBUTION)})
    [e] = events.endpoints
    assert (e.name, e.url, e.timeout, e.threshold, e.backoff) == ("alistener", "https://mylistener.example.com/event",
                                                                  0.5, 5, 1.0)
    assert e.headers == (("Authorization", "Bearer <your token>"),)
    assert not e.wants("push", "application/octet-stream") and not e.wants("pull", "x")
    assert not e.wants("push", "application/vnd.oci.image.config.v1+json") and e.wants("delete", "x")
    assert events.pull_share == 0.0 and events.enabled


def test_the_section_may_live_in_wharf_config(tmp_path: pathlib.Path) -> None:
    nested = "".join("  " + line + "\n" for line in DISTRIBUTION.splitlines())
    config = _write(tmp_path, "port: 5000\nevents:\n" + nested)
    assert load({"WHARF_CONFIG": config}).endpoints[0].name == "alistener"
    assert not load({}).enabled


@pytest.mark.parametrize(("text", "message"), [
    ("endpoints:\n  - url: https://x.example\n", "line 2: endpoints[0]: name is missing"),
    ("endpoints:\n  - name: a b\n    url: https://x.example\n", "line 2: endpoints[0].name: 'a b' is not a name"),
    ("endpoints:\n  - name: a\n    url: ftp://x.example\n", "line 3: endpoints[0].url: is not a URL"),
    ("endpoints:\n  - name: a\n    url: https://u:p@x.example/\n", "must not hold a user name or password"),
    ("endpoints:\n  - name: a\n    url: https://x.example\n    timeout: soon\n", "line 4: endpoints[0].timeout"),
    ("endpoints:\n  - name: a\n    url: https://x.example\n    format: xml\n", "expected distribution or cloudevents"),
    ("endpoints:\n  - name: a\n    url: https://x.example\n    ignore: {actions: [fly]}\n", "actions are push"),
    ("endpoints:\n  - name: a\n    url: https://x.example\n    pull_sample: 2\n", "not a share from 0 to 1"),
    ("endpoints:\n  - name: a\n    url: https://x.example\n  - name: a\n    url: https://y.example\n",
     "line 4: endpoints[1].name: 'a' names another endpoint too"),
    ("endpoints:\n  - name: a\n    url: https://x.example\n    secret_file: nowhere\n", "cannot read 'nowhere'"),
    ("endpoint: []\n", "line 1: endpoint is not a key here (expected endpoints)"),
])
def test_each_mistake_is_one_line_naming_the_file_and_the_line(tmp_path: pathlib.Path, text: str,
                                                               message: str) -> None:
    env = {"WHARF_EVENTS_FILE": _write(tmp_path, text)}
    with pytest.raises(EventsError) as caught:
        load(env)
    assert str(caught.value).startswith(f"WHARF_EVENTS_FILE={env['WHARF_EVENTS_FILE']!r} line ")
    assert message in str(caught.value)
    assert problems(env)


def test_secrets_stay_out_of_reprs_and_messages(tmp_path: pathlib.Path) -> None:
    (tmp_path / "key").write_text("hunter2-secret\n")
    text = ("endpoints:\n  - name: a\n    url: https://x.example\n    secret_file: key\n"
            "    headers: {Authorization: [Bearer tok-secret]}\n")
    [e] = load({"WHARF_EVENTS_FILE": _write(tmp_path, text)}).endpoints
    assert e.secret == b"hunter2-secret" and "secret" not in repr(e).replace("secret=", "")
    bad = text.replace("[Bearer tok-secret]", "[\"Bearer tok-secret\\n\"]")
    with pytest.raises(EventsError) as caught:
        load({"WHARF_EVENTS_FILE": _write(tmp_path, bad, "bad.yaml")})
    assert "tok-secret" not in str(caught.value)


def _event(**fields: object) -> Event:
    base = {"id": "3-1700000000000-0", "at_ms": 1_700_000_000_000, "action": "push", "repository": "team/app",
            "digest": "sha256:" + "a" * 64, "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 7,
            "tag": "v1", "origin": {"account": "alice", "address": "10.0.0.1", "host": "reg.example",
                                    "method": "PUT", "user_agent": "skopeo", "request_id": "r"}}
    return Event(**{**base, **fields})  # type: ignore[arg-type]


def test_distributions_envelope_and_cloudevents() -> None:
    source = Source("https://reg.example", "replica-1")
    payload, content_type = envelope.body([_event()], source, "distribution")
    assert content_type == "application/vnd.docker.distribution.events.v1+json"
    [event] = json.loads(payload)["events"]
    assert event == {
        "id": "3-1700000000000-0", "timestamp": "2023-11-14T22:13:20.000Z", "action": "push",
        "target": {"repository": "team/app", "mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": "sha256:" + "a" * 64, "size": 7, "length": 7, "tag": "v1",
                   "url": "https://reg.example/v2/team/app/manifests/sha256:" + "a" * 64},
        "request": {"id": "r", "addr": "10.0.0.1", "host": "reg.example", "method": "PUT", "useragent": "skopeo"},
        "actor": {"name": "alice"}, "source": {"addr": "reg.example", "instanceID": "replica-1"}}
    payload, content_type = envelope.body([_event(action="mount", source="other/app")], source, "cloudevents")
    assert content_type == "application/cloudevents-batch+json"
    [cloud] = json.loads(payload)
    assert cloud["specversion"] == "1.0" and cloud["type"] == "io.wharf.registry.mount"
    assert cloud["subject"] == "team/app:v1" and cloud["data"]["target"]["fromRepository"] == "other/app"
    signed = envelope.signature(b"k", payload)
    assert envelope.verify(b"k", payload, signed) and not envelope.verify(b"k", payload + b" ", signed)


def test_an_endpoints_share_of_pulls() -> None:
    assert Endpoint("a", "https://x", pull_sample=0.25).pull_share == 0.25
    assert Endpoint("a", "https://x", ignored_actions=frozenset({"pull"})).pull_share == 0.0
