"""A hostile review of the client, second round: tokens stay with their registry, token forms with their realm,
pulled files in their directory.

Each test plays the registry (or the realm, or the neighbour sharing a directory) that
lies, and checks what reached the host it pointed at or which file the client wrote.
"""

from __future__ import annotations

import base64
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from wharf_client import (
    Client,
    ClientOptions,
    Credential,
    Descriptor,
    RegistryImageSource,
    RegistryImageTarget,
    RegistryOptions,
    StaticCredentials,
    cli,
    copy_image,
    dockerarchive,
)
from wharf_client import mediatypes as mt
from wharf_client.artifact import pull_artifact
from wharf_client.auth.challenge import Challenge
from wharf_client.auth.challenge import parse as parse_challenges
from wharf_client.blobio import BytesSource
from wharf_client.cli.context import Context
from wharf_client.digest import of
from wharf_client.errors import AuthenticationError, FormatError, ProtocolError, RegistryError, TransportError
from wharf_client.manifest import Manifest, image_manifest
from wharf_client.transport import retry_after_seconds
from wharf_client.upload import Uploader, received_bytes

from tests.unit.client.fakeregistry import HOST, OTHER, Behaviour, FakeRegistry, OtherHost, respond
from tests.unit.client.test_copy_referrers import attach, push_image

ALICE = Credential(username="alice", password="secret")
MakeClient = Callable[..., Client]


class RecordingRegistry(FakeRegistry):
    """The honest registry, remembering the Authorization header of every request."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        super().__init__(behaviour)
        self.authorizations: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.authorizations.append(request.headers.get("Authorization", ""))
        return super().send(request, **kwargs)


def two_registry_client(honest: FakeRegistry, thief: OtherHost, thief_credential: Credential) -> Client:
    session = requests.Session()
    options = ClientOptions(default_registry_options=RegistryOptions(plain_http=True), retries=0)
    client = Client(options, StaticCredentials({HOST: ALICE, OTHER: thief_credential}), session)
    session.mount(f"http://{HOST}", honest)
    session.mount(f"http://{OTHER}", thief)
    return client


# -- a token goes back only to the registry it was asked for ----------------------------------------


def test_a_registry_naming_another_ones_realm_is_not_given_its_cached_token() -> None:
    honest = RecordingRegistry(Behaviour(bearer=True))
    # The thief names the honest registry's realm, service and scope; the user's login there has the same name.
    steal = f'Bearer realm="http://{HOST}/token",service="fake",scope="repository:app:pull"'
    thief = OtherHost(401, {"WWW-Authenticate": steal}, b"{}")
    with two_registry_client(honest, thief, Credential("alice", "another-password")) as client:
        assert list(client.repository(f"{HOST}/app").tags()) == []
        with pytest.raises(AuthenticationError):
            list(client.repository(f"{OTHER}/app").tags())
    honest_tokens = {auth for auth in honest.authorizations if auth.startswith("Bearer ")}
    assert honest_tokens
    sent_to_thief = {auth for _, _, auth in thief.requests if auth}
    assert not sent_to_thief & honest_tokens
    # The thief's challenge is answered like any other: the realm is asked, with the thief's own credential.
    first, *for_thief = [request["auth"] for request in honest.token_requests]
    assert for_thief and first not in for_thief


# -- the token form (password, refresh token) follows no redirect off the realm's origin ---------------


class MovingRealm(FakeRegistry):
    """A registry whose realm answers its POSTs at /token with a redirect to ``location``."""

    def __init__(self, location: str, status: int = 307) -> None:
        super().__init__(Behaviour(bearer=True))
        self.location = location
        self.status = status

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if request.method == "POST" and (request.url or "").endswith("/token"):
            self.log.append(("POST", "/token"))
            return respond(request, self.status, {"Location": self.location}, b"")
        return super().send(request, **kwargs)


@pytest.mark.parametrize("location", [f"http://{OTHER}/steal", f"http://{HOST}:8080/token", "//other.test/token"])
@pytest.mark.parametrize("status", [307, 308])
def test_a_realm_redirecting_the_password_form_elsewhere_gets_nothing_sent(location: str, status: int) -> None:
    realm = MovingRealm(location, status)
    thief = OtherHost(200, {"Content-Type": "application/json"}, b'{"token":"t"}')
    with two_registry_client(realm, thief, ALICE) as client:
        challenge = client.transport(HOST).ping()
        assert challenge is not None
        with pytest.raises(AuthenticationError, match=r"redirects to .*refusing to send the credentials"):
            client.tokens.password_grant(challenge, ALICE)
        with pytest.raises(AuthenticationError, match="refusing to send the credentials"):
            client.tokens.fetch(challenge, ["repository:app:pull"], Credential(identity_token="refresh-secret"))
    assert thief.requests == []
    assert realm.log.count(("POST", "/token")) == 2


def test_a_realm_moving_its_form_on_its_own_origin_is_followed() -> None:
    class Moved(FakeRegistry):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            if request.method == "POST" and (request.url or "").endswith("/old-token"):
                return respond(request, 308, {"Location": "/token"}, b"")
            return super().send(request, **kwargs)

    realm = Moved(Behaviour(bearer=True))
    with two_registry_client(realm, OtherHost(), ALICE) as client:
        challenge = Challenge("bearer", {"realm": f"http://{HOST}/old-token", "service": "fake"})
        issued = client.tokens.password_grant(challenge, ALICE)
    assert issued is not None and issued.value.startswith("tok-")
    assert realm.token_requests[-1]["form"]["password"] == ["secret"]


# -- a pulled artifact's files stay in the output directory, and are never written through a link ---------


def titled_artifact(fake: FakeRegistry, titles: list[object]) -> None:
    layers = []
    for number, title in enumerate(titles):
        data = f"file {number}\n".encode()
        fake.blobs[of(data)] = data
        layers.append(Descriptor("text/plain", of(data), len(data), annotations={mt.TITLE_ANNOTATION: title}))
    fake.blobs[of(b"{}")] = b"{}"
    manifest = image_manifest(Descriptor(mt.OCI_EMPTY, of(b"{}"), 2), layers, artifact_type="application/x-test")
    fake.manifests[("app", "v1")] = (manifest.content, manifest.media_type)


@pytest.mark.parametrize("title", ["a\x00b", ["x"], {"a": 1}, 7])
def test_a_title_that_is_not_a_file_name_is_a_format_error(fake: FakeRegistry, make_client: MakeClient,
                                                          tmp_path: pathlib.Path, title: object) -> None:
    titled_artifact(fake, [title])
    with pytest.raises(FormatError, match="not a file name"):
        pull_artifact(make_client().repository(f"{HOST}/app"), "v1", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("title", ["link/pwned", "link/deeper/pwned", "inner/../link/x"])
def test_a_title_through_a_link_out_of_the_output_directory_is_refused(fake: FakeRegistry, make_client: MakeClient,
                                                                       tmp_path: pathlib.Path, title: str) -> None:
    output, outside = tmp_path / "out", tmp_path / "outside"
    output.mkdir()
    outside.mkdir()
    (output / "link").symlink_to(outside)
    titled_artifact(fake, [title])
    with pytest.raises(FormatError, match=r"symbolic link|leaves the output directory"):
        pull_artifact(make_client().repository(f"{HOST}/app"), "v1", output)
    assert list(outside.iterdir()) == []


def test_a_link_inside_the_output_directory_is_followed(fake: FakeRegistry, make_client: MakeClient,
                                                        tmp_path: pathlib.Path) -> None:
    output = tmp_path / "out"
    (output / "real").mkdir(parents=True)
    (output / "alias").symlink_to(output / "real")
    titled_artifact(fake, ["alias/file"])
    pull_artifact(make_client().repository(f"{HOST}/app"), "v1", output)
    assert (output / "real" / "file").read_bytes() == b"file 0\n"


def test_a_planted_partial_link_is_not_written_through(fake: FakeRegistry, make_client: MakeClient,
                                                       tmp_path: pathlib.Path) -> None:
    output, victim = tmp_path / "out", tmp_path / "victim"
    output.mkdir()
    victim.write_bytes(b"precious\n")
    (output / ".x.partial").symlink_to(victim)  # the name the download used to go to first
    titled_artifact(fake, ["x"])
    pull_artifact(make_client().repository(f"{HOST}/app"), "v1", output)
    assert victim.read_bytes() == b"precious\n"
    assert (output / "x").read_bytes() == b"file 0\n" and not (output / "x").is_symlink()
    assert sorted(p.name for p in output.iterdir()) == [".x.partial", "x"]


def test_blob_get_does_not_write_through_a_planted_partial_link(fake: FakeRegistry, make_client: MakeClient,
                                                                tmp_path: pathlib.Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"layer bytes\n"
    fake.blobs[of(data)] = data
    victim, output = tmp_path / "victim", tmp_path / "layer.bin"
    victim.write_bytes(b"precious\n")
    (tmp_path / ".layer.bin.partial").symlink_to(victim)
    monkeypatch.setattr(Context, "from_args", classmethod(lambda cls, args: cls(args, make_client(), None)))
    assert cli.run(["blob", "get", f"{HOST}/app@{of(data)}", "-o", str(output), "-q"]) == 0
    assert victim.read_bytes() == b"precious\n"
    assert output.read_bytes() == data and not output.is_symlink()


# -- numbers in a registry's headers and token answers never crash the client ---------------------------


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b2", "9" * 5000])
def test_header_numbers_that_int_refuses_are_not_numbers(fake: FakeRegistry, make_client: MakeClient,
                                                         value: str) -> None:
    data = b"blob"
    fake.blobs[of(data)] = data
    fake.override("HEAD", "/blobs/", lambda _: (200, {"Content-Length": value}, b""))
    fake.override("GET", "/tags/list", lambda _: (503, {"Retry-After": value}, b""))
    client = make_client(retries=1)
    repo = client.repository(f"{HOST}/app")
    assert repo.blob_size(of(data)) == 0  # unknown size, as with no header
    with pytest.raises(RegistryError, match="HTTP 503"):
        list(repo.tags())
    assert len(client.slept) == 1  # one retry, after the usual backoff
    assert received_bytes(f"0-{value}") is None
    assert retry_after_seconds(value) is None


@pytest.mark.parametrize("expires_in", ["1e400", "Infinity", "NaN", "9" * 400, '"\u00b2"', "true", "[]"])
def test_a_token_with_an_absurd_lifetime_is_used(make_client: MakeClient, expires_in: str) -> None:
    class Realm(FakeRegistry):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            if (request.url or "").split("?")[0].endswith("/token"):
                return respond(request, 200, {}, f'{{"token":"tok-x","expires_in":{expires_in}}}'.encode())
            return super().send(request, **kwargs)

    client = make_client()
    client.session.mount(f"http://{HOST}", Realm(Behaviour(bearer=True)))
    assert list(client.repository(f"{HOST}/app").tags()) == []


# -- a URL that urllib cannot parse is the registry's error, not a crash -----------------------------------

BAD_URL = "http://[::1"


def test_a_redirect_to_a_url_that_cannot_be_parsed_is_a_transport_error(fake: FakeRegistry,
                                                                        make_client: MakeClient) -> None:
    fake.override("GET", "/tags/list", lambda _: (307, {"Location": BAD_URL}, b""))
    with pytest.raises(TransportError, match="Invalid IPv6 URL"):
        list(make_client().repository(f"{HOST}/app").tags())


@pytest.mark.parametrize("header", ["Link", "Location"])
def test_a_link_or_location_that_cannot_be_parsed_is_a_protocol_error(fake: FakeRegistry, make_client: MakeClient,
                                                                      header: str) -> None:
    fake.behaviour.monolithic_post = False
    fake.override("GET", "/tags/list", lambda _: (200, {"Link": f'<{BAD_URL}/x>; rel="next"'}, b'{"tags":["a"]}'))
    fake.override("POST", "/blobs/uploads/$", lambda _: (202, {"Location": BAD_URL}, b""))
    repo = make_client().repository(f"{HOST}/app")
    with pytest.raises(ProtocolError, match=f"the {header} header .* is not a URL"):
        if header == "Link":
            list(repo.tags())
        else:
            data = b"blob"
            Uploader(repo, BytesSource(data, Descriptor("application/octet-stream", of(data), len(data)))).run()


def test_a_realm_redirect_that_cannot_be_parsed_is_refused(make_client: MakeClient) -> None:
    realm = MovingRealm(BAD_URL)
    client = make_client()
    client.session.mount(f"http://{HOST}", realm)
    challenge = client.transport(HOST).ping()
    assert challenge is not None
    with pytest.raises(TransportError, match="Invalid IPv6 URL"):  # requests parses it before handing it back
        client.tokens.password_grant(challenge, ALICE)
    assert realm.log.count(("POST", "/token")) == 1


# -- ~/.netrc is not a credential store of the client: its entries go nowhere ------------------------------


def test_netrc_credentials_are_never_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("default login netrc-user password NETRC-SECRET\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    honest = RecordingRegistry(Behaviour(bearer=True))
    data = b"blob bytes"
    honest.blobs[of(data)] = data
    storage = OtherHost(200, {}, data)
    honest.override("GET", "/blobs/", lambda _: (307, {"Location": f"http://{OTHER}/storage/blob"}, b""))
    with two_registry_client(honest, storage, Credential()) as client:
        assert list(client.repository(f"{HOST}/app").tags()) == []
        descriptor = Descriptor("application/octet-stream", of(data), len(data))
        assert client.repository(f"{HOST}/app").fetch_blob(descriptor) == data
    sent = [*honest.authorizations, *(request["auth"] for request in honest.token_requests),
            *(auth for _, _, auth in storage.requests)]
    netrc_basic = "Basic " + base64.b64encode(b"netrc-user:NETRC-SECRET").decode()
    assert storage.requests and honest.token_requests and netrc_basic not in sent
    assert any(auth.startswith("Bearer tok-") for auth in honest.authorizations)  # the token, not netrc's Basic
    assert all(auth == "" for _, _, auth in storage.requests)


# -- a docker tarball's config is read whole only up to the limit the other readers of configs have -------


def test_an_oversized_config_is_refused_before_it_is_read_whole(tmp_path: pathlib.Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dockerarchive, "MAX_CONFIG_BYTES", 1024)
    config_bytes = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                               "pad": "A" * 2000}).encode()
    config = BytesSource(config_bytes, Descriptor(mt.OCI_CONFIG, of(config_bytes), len(config_bytes)))
    target = dockerarchive.DockerArchiveTarget(tmp_path / "out" / "image.tar")
    read_whole: list[pathlib.Path] = []
    original = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda path: read_whole.append(path) or original(path))
    try:
        target.put_blob(config, lambda _: None)
        with pytest.raises(FormatError, match="over the 1024 byte limit"):
            target.put_manifest(image_manifest(config.descriptor, []), None, True)
    finally:
        target.close()
    assert read_whole == []
    assert list((tmp_path / "out").iterdir()) == []


# -- headers of megabytes (100 lines of 64 KiB, joined) are parsed in linear time --------------------------


def test_a_huge_link_header_costs_no_quadratic_time(fake: FakeRegistry, make_client: MakeClient) -> None:
    fake.override("GET", "/tags/list", lambda _: (200, {"Link": "<" * 150_000}, b'{"tags":["a"]}'))
    started = time.monotonic()
    assert list(make_client().repository(f"{HOST}/app").tags()) == ["a"]
    assert time.monotonic() - started < 5  # it took 90 s, and hours for the 6 MB a response can carry


def test_a_huge_challenge_costs_no_quadratic_time(fake: FakeRegistry, make_client: MakeClient) -> None:
    header = "Bearer " + "a=b," * 400_000
    fake.override("GET", "/tags/list", lambda _: (401, {"WWW-Authenticate": header}, b""))
    started = time.monotonic()
    with pytest.raises(AuthenticationError):
        list(make_client().repository(f"{HOST}/app").tags())
    assert time.monotonic() - started < 5  # it took 25 s, and minutes for 6 MB


def test_challenges_still_parse_after_the_rewrite() -> None:
    found = parse_challenges('Basic realm="a, b", Bearer realm="https://x/token",service="s",'
                             'scope="repository:a:pull repository:b:pull" ,  Negotiate')
    assert [(c.scheme, c.params) for c in found] == [
        ("basic", {"realm": "a, b"}),
        ("bearer", {"realm": "https://x/token", "service": "s", "scope": "repository:a:pull repository:b:pull"}),
        ("negotiate", {})]
    assert parse_challenges('bearer realm="a\\"b", error=invalid_token')[0].params == \
        {"realm": 'a"b', "error": "invalid_token"}
    assert parse_challenges("   ") == []


# -- a manifest whose lists and objects are other JSON types is a format error, not a crash ---------------


@pytest.mark.parametrize(("field", "value", "read"), [("layers", 5, "layers"), ("layers", True, "blobs"),
                                                      ("manifests", 5, "children"), ("annotations", 5, "annotations"),
                                                      ("annotations", "ab", "annotations")])
def test_a_manifest_field_of_the_wrong_type_is_a_format_error(field: str, value: object, read: str) -> None:
    payload: dict[str, Any] = {"schemaVersion": 2, field: value}
    if field != "manifests":
        payload["mediaType"] = mt.OCI_MANIFEST
    manifest = Manifest.parse(json.dumps(payload).encode())
    with pytest.raises(FormatError, match=f"{field} is not"):
        getattr(manifest, read)


# -- a copy with referrers copies only manifests whose own subject is the one they were listed for ---------


def test_a_listed_referrer_with_another_subject_is_not_copied(tmp_path: pathlib.Path,
                                                               make_client: MakeClient) -> None:
    fake = FakeRegistry(Behaviour(referrers_api=True))
    client = make_client()
    client.session.mount(f"http://{HOST}", fake)
    image = push_image(client, tmp_path, "image", ("linux/amd64",), tag="v1")
    victim = push_image(client, tmp_path, "victim", ("linux/arm64",), tag="victim")
    source = client.repository(f"{HOST}/src")
    forged = attach(source, tmp_path, victim.digest, "application/vnd.example.signature")
    size = len(fake.manifests[("src", forged)][0])
    listing = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": forged, "size": size}]}).encode()
    fake.override("GET", f"/referrers/{image.digest}", lambda _: (200, {"Content-Type": mt.OCI_INDEX}, listing))
    expected = f"listed as a referrer of {image.digest}, but its subject is {victim.digest}"
    with pytest.raises(FormatError, match=expected):
        copy_image(RegistryImageSource(source, "v1"), RegistryImageTarget(client.repository(f"{HOST}/dst")), "v1",
                   referrers=True)
    assert [key for key in fake.manifests if key[0] == "dst"] == []
