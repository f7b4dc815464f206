"""Property tests at the edges of the grammar (issue 20): repository names, tags and digests, sent
to the running stack. Valid ones work end to end; invalid ones get the code docs/api.md gives them,
never a 5xx, and create nothing. The expectations are written from the spec's grammar here, not
imported from services/common, so that a wrong rule there cannot agree with itself."""

from __future__ import annotations

import re
import urllib.parse

import pytest
import requests
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tests.support.properties import CI, Answer, Raw, catalog, digest, image_manifest, push_blob, tags
from tests.support.stack import RunningStack

pytestmark = pytest.mark.e2e

# The distribution spec's grammar (and Wharf's documented limits: 255 characters, two algorithms).
NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_SHAPE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
ENCODED_LENGTH = {"sha256": 64, "sha512": 128}

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
runs = st.text(ALNUM, min_size=1, max_size=6)
separators = st.sampled_from([".", "_", "__", "-", "--", "---"])
components = st.builds(lambda head, rest: head + "".join(sep + run for sep, run in rest),
                       runs, st.lists(st.tuples(separators, runs), max_size=3))
short_names = st.lists(components, min_size=1, max_size=4).map("/".join)


def _longest(name: str) -> str:
    """``name`` grown to exactly 255 characters with one more component."""
    return f"{name}/{'x' * (254 - len(name))}" if len(name) < 254 else name


valid_names = st.one_of(short_names, short_names.map(_longest))
valid_tags = st.one_of(st.from_regex(TAG, fullmatch=True),
                       st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{127}", fullmatch=True))


def is_valid_name(name: str) -> bool:
    return len(name) <= 255 and NAME.fullmatch(name) is not None


def path_of(name: str) -> str:
    """The name as it goes into a request line: every byte outside [A-Za-z0-9/._-] percent-encoded."""
    return urllib.parse.quote(name, safe="/")


# Ways to break a valid name, each at a position the strategy picks. Look-alikes: Cyrillic a,
# fullwidth a, dotless i, the Kelvin sign (which lowercases to "k"), a long s.
_BREAKS = {
    "uppercase": lambda name, i: name[:i] + name[i].upper() + name[i + 1:] if name[i].isalpha() else "A" + name,
    "leading": lambda name, i: "._-/"[i % 4] + name,
    "trailing": lambda name, i: name + "._-/"[i % 4],
    "double": lambda name, i: name[:i] + ["..", "___", "._", "-.", "//", "_-"][i % 6] + name[i:],
    "dot-segment": lambda name, i: f"{name}/{'..' if i % 2 else '.'}/x",
    "empty-component": lambda name, i: name.replace("/", "//", 1) if "/" in name else name + "//x",
    "over-long": lambda name, i: (name + "/" + "y" * 300)[:256 + i % 40].rstrip("/") + "z",
    "look-alike": lambda name, i: name[:i] + "\u0430\uff41\u0131\u212a\u017f"[i % 5] + name[i + 1:],
    "control": lambda name, i: name[:i] + "\x00\t\n\r\x7f \x1b"[i % 7] + name[i:],
    "percent": lambda name, i: name[:i] + "%" + name[i:],
}


@st.composite
def invalid_names(draw: st.DrawFn) -> tuple[str, str | None]:
    """(the name as sent in the path, the name decoded, or None when only the raw form is invalid)."""
    name = draw(short_names)
    how = draw(st.sampled_from([*_BREAKS, "encoded-slash"]))
    i = draw(st.integers(0, len(name) - 1))
    if how == "encoded-slash":
        raw = path_of(name.replace("/", "%2F", 1) if "/" in name else f"{name}/x").replace("%252F", "%2F")
        if draw(st.booleans()):
            raw = raw.replace("%2F", "%2f")
        return raw, None
    broken = _BREAKS[how](name, i)
    assume(not is_valid_name(broken))
    return path_of(broken), broken


def expect_error(answer: Answer, status: int, code: str, what: str) -> None:
    assert answer.status < 500, (what, answer.status, answer.body[:300])
    assert answer.status == status, (what, answer.status, answer.body[:300])
    if answer.body or not what.startswith("HEAD"):
        assert answer.code == code, (what, answer.body[:300])


@pytest.fixture(scope="module")
def seeded(property_stack: RunningStack) -> tuple[str, str, bytes]:
    """A repository holding a config blob and a manifest: (name, config digest, manifest body)."""
    config = b'{"architecture":"amd64","os":"linux"}'
    config_digest = push_blob(property_stack.url, "props/seed", config)
    manifest = image_manifest(config_digest, len(config))
    response = requests.put(f"{property_stack.url}/v2/props/seed/manifests/v1", data=manifest, timeout=30,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    return "props/seed", config_digest, manifest


@settings(CI, max_examples=25)
@given(name=valid_names, tag=valid_tags)
def test_valid_names_and_tags_push_and_pull(property_stack: RunningStack, name: str, tag: str) -> None:
    url = property_stack.url
    assert is_valid_name(name) and TAG.fullmatch(tag)
    config = f'{{"name":"{name}","tag":"{tag}"}}'.encode()
    config_digest = push_blob(url, name, config)
    manifest = image_manifest(config_digest, len(config))
    pushed = requests.put(f"{url}/v2/{name}/manifests/{tag}", data=manifest, timeout=30,
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert pushed.status_code == 201, pushed.text
    assert pushed.headers["Docker-Content-Digest"] == digest(manifest)
    for reference in (tag, digest(manifest)):
        pulled = requests.get(f"{url}/v2/{name}/manifests/{reference}", timeout=30)
        assert pulled.status_code == 200 and pulled.content == manifest, (reference, pulled.status_code)
    blob = requests.get(f"{url}/v2/{name}/blobs/{config_digest}", timeout=30)
    assert blob.status_code == 200 and blob.content == config
    assert tag in (tags(url, name) or [])
    assert name in catalog(url)


@settings(CI, max_examples=40)
@given(invalid=invalid_names())
@example(invalid=("a/b%0Ac", "a/b\nc"))       # was 404 UNSUPPORTED: the route did not match across "\n"
@example(invalid=("%2Fa", None))              # was a 308 redirect to /v2/a/...: "/a" is not "a"
@example(invalid=("a//b", "a//b"))
def test_invalid_names_are_refused_everywhere(property_stack: RunningStack, seeded: tuple[str, str, bytes],
                                              invalid: tuple[str, str | None]) -> None:
    url, raw = property_stack.url, Raw(property_stack.url)
    seed, config_digest, manifest = seeded
    path, decoded = invalid
    before = catalog(url)
    requests_to_make: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("GET", f"/v2/{path}/tags/list", b"", {}),
        ("GET", f"/v2/{path}/manifests/v1", b"", {}),
        ("HEAD", f"/v2/{path}/manifests/v1", b"", {}),
        ("PUT", f"/v2/{path}/manifests/v1", manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}),
        ("DELETE", f"/v2/{path}/manifests/v1", b"", {}),
        ("GET", f"/v2/{path}/blobs/{config_digest}", b"", {}),
        ("HEAD", f"/v2/{path}/blobs/{config_digest}", b"", {}),
        ("DELETE", f"/v2/{path}/blobs/{config_digest}", b"", {}),
        ("POST", f"/v2/{path}/blobs/uploads/", b"", {}),
        ("POST", f"/v2/{path}/blobs/uploads/?digest={digest(b'x')}", b"x", {}),
        ("POST", f"/v2/{path}/blobs/uploads/?mount={config_digest}&from={seed}", b"", {}),
        ("GET", f"/v2/{path}/blobs/uploads/{'0' * 32}", b"", {}),
        ("PATCH", f"/v2/{path}/blobs/uploads/{'0' * 32}", b"x", {"Content-Range": "0-0"}),
        ("PUT", f"/v2/{path}/blobs/uploads/{'0' * 32}?digest={digest(b'x')}", b"x", {}),
        ("DELETE", f"/v2/{path}/blobs/uploads/{'0' * 32}", b"", {}),
        ("GET", f"/v2/{path}/referrers/{config_digest}", b"", {}),
    ]
    if decoded is not None:
        source = urllib.parse.quote(decoded, safe="")
        requests_to_make.append(("POST", f"/v2/props/target/blobs/uploads/?mount={config_digest}&from={source}",
                                 b"", {}))
    for method, target, body, headers in requests_to_make:
        expect_error(raw(method, target, body, headers), 400, "NAME_INVALID", f"{method} {target[:120]}")
    assert catalog(url) == before


def reference_kind(reference: str) -> str:
    """How docs/api.md reads a manifest reference: "digest", "bad-digest", "tag" or "bad-tag"."""
    if DIGEST_SHAPE.fullmatch(reference):
        algorithm, encoded = reference.split(":", 1)
        ok = len(encoded) == ENCODED_LENGTH.get(algorithm) and re.fullmatch(r"[0-9a-f]+", encoded)
        return "digest" if ok else "bad-digest"
    return "tag" if TAG.fullmatch(reference) else "bad-tag"


invalid_tags = st.one_of(
    st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{128,140}", fullmatch=True),
    st.from_regex(r"[.-][a-zA-Z0-9._-]{0,20}", fullmatch=True),
    st.builds(lambda head, odd, tail: head + odd + tail, st.from_regex(TAG, fullmatch=True).map(lambda t: t[:20]),
              st.sampled_from([*"+@!~ $&*()[]{}'\",;=\\|^`", "\u00e9", "\u0430", "\u200f", "\x00", "\n"]),
              st.text("abc0._-", max_size=5)),
)


@settings(CI, max_examples=30)
@given(tag=invalid_tags)
@example(tag="..")
@example(tag="a:b")  # digest-shaped: DIGEST_INVALID, not a tag
def test_invalid_tags_are_refused(property_stack: RunningStack, seeded: tuple[str, str, bytes], tag: str) -> None:
    url, raw = property_stack.url, Raw(property_stack.url)
    seed, _, manifest = seeded
    kind = reference_kind(tag)
    assume(kind in ("bad-tag", "bad-digest"))
    code = "DIGEST_INVALID" if kind == "bad-digest" else "MANIFEST_INVALID"
    before_tags, before_catalog = tags(url, seed), catalog(url)
    encoded = urllib.parse.quote(tag, safe="")
    content_type = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    for method, target, body, headers in [
        ("GET", f"/v2/{seed}/manifests/{encoded}", b"", {}),
        ("HEAD", f"/v2/{seed}/manifests/{encoded}", b"", {}),
        ("PUT", f"/v2/{seed}/manifests/{encoded}", manifest, content_type),
        ("DELETE", f"/v2/{seed}/manifests/{encoded}", b"", {}),
        ("PUT", f"/v2/props/tagged/manifests/ok?tag={encoded}", manifest, content_type),
    ]:
        # ?tag= is always a tag: a digest-shaped one is just an invalid tag there.
        want = "MANIFEST_INVALID" if "?tag=" in target else code
        expect_error(raw(method, target, body, headers), 400, want, f"{method} {target[:120]}")
    assert tags(url, seed) == before_tags
    assert catalog(url) == before_catalog


# Digests near the valid ones: the algorithm (registered, unknown, uppercase, empty), the encoded
# length off by one, uppercase hex, characters outside hex.
@st.composite
def near_digests(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(["sha256", "sha512", "SHA256", "Sha512", "sha384", "md5", "blake3",
                                      "sha256+b64", "", "sha-256"]))
    length = ENCODED_LENGTH.get(algorithm.lower(), 64) + draw(st.sampled_from([0, 0, 0, -1, 1, -64]))
    encoded = draw(st.text("0123456789abcdef", min_size=max(length, 0), max_size=max(length, 0)))
    mutation = draw(st.sampled_from(["none", "none", "upper", "non-hex"]))
    if mutation == "upper" and encoded:
        encoded = encoded.upper() if draw(st.booleans()) else encoded[:-1] + "A"
    elif mutation == "non-hex" and encoded:
        encoded = encoded[:-1] + draw(st.sampled_from(list("gzG=_-")))
    return f"{algorithm}:{encoded}"


def is_valid_digest(value: str) -> bool:
    return reference_kind(value) == "digest"


@settings(CI, max_examples=40)
@given(value=near_digests())
@example(value="sha256:")
@example(value="sha512:" + "0" * 128)
def test_digests_at_the_edges(property_stack: RunningStack, seeded: tuple[str, str, bytes], value: str) -> None:
    url, raw = property_stack.url, Raw(property_stack.url)
    seed = seeded[0]
    valid = is_valid_digest(value)
    path = urllib.parse.quote(value, safe=":")
    query = urllib.parse.quote(value, safe="")
    before = catalog(url)
    bad = (400, "DIGEST_INVALID")
    # Valid ones are unknown here (random hex): the documented "not found" answers.
    expectations: list[tuple[str, str, bytes, tuple[int, str]]] = [
        ("GET", f"/v2/{seed}/blobs/{path}", b"", (404, "BLOB_UNKNOWN") if valid else bad),
        ("HEAD", f"/v2/{seed}/blobs/{path}", b"", (404, "BLOB_UNKNOWN") if valid else bad),
        ("DELETE", f"/v2/{seed}/blobs/{path}", b"", (404, "BLOB_UNKNOWN") if valid else bad),
        # Monolithic: a valid digest that is not the body's is DIGEST_INVALID as well.
        ("POST", f"/v2/{seed}/blobs/uploads/?digest={query}", b"body", bad),
        ("POST", f"/v2/{seed}/blobs/uploads/?mount={query}&from=props/seed", b"", (202, "") if valid else bad),
        ("GET", f"/v2/{seed}/referrers/{path}", b"", (200, "") if valid else bad),
    ]
    kind = reference_kind(value)
    if kind != "bad-tag":  # a reference without the digest shape is a tag ("SHA256:..." is an invalid tag)
        expectations += [
            ("GET", f"/v2/{seed}/manifests/{path}", b"", (404, "MANIFEST_UNKNOWN") if valid else bad),
            ("DELETE", f"/v2/{seed}/manifests/{path}", b"", (404, "MANIFEST_UNKNOWN") if valid else bad),
            ("PUT", f"/v2/{seed}/manifests/{path}", seeded[2], bad),  # the body never hashes to it
        ]
    else:
        expectations.append(("GET", f"/v2/{seed}/manifests/{path}", b"", (400, "MANIFEST_INVALID")))
    for method, target, body, (status, code) in expectations:
        answer = raw(method, target, body, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
                     if "/manifests/" in target else {})
        if code:
            expect_error(answer, status, code, f"{method} {target[:120]}")
        else:
            assert answer.status == status, (method, target, answer.status, answer.body[:300])
    # An upload session's commit, with the digest in ?digest=.
    session = raw("POST", f"/v2/{seed}/blobs/uploads/")
    assert session.status == 202
    expect_error(raw("PUT", f"{session.headers['location']}?digest={query}", b"chunk"), *bad, f"PUT commit {value}")
    assert catalog(url) == before


@settings(CI, max_examples=10)
@given(data=st.binary(max_size=3000), chunked=st.booleans())
def test_sha512_blobs_round_trip(property_stack: RunningStack, data: bytes, chunked: bool) -> None:
    """docs/api.md: sha512 is verified like sha256, for uploads and reads."""
    url = property_stack.url
    blob_digest = digest(data, "sha512")
    if chunked:
        session = requests.post(f"{url}/v2/props/sha512/blobs/uploads/", timeout=30)
        assert session.status_code == 202
        location = session.headers["Location"]
        half = len(data) // 2
        if half:
            patched = requests.patch(url + location, data=data[:half], timeout=30,
                                     headers={"Content-Range": f"0-{half - 1}"})
            assert patched.status_code == 202, patched.text
            location = patched.headers["Location"]
        done = requests.put(url + location, params={"digest": blob_digest}, data=data[half:], timeout=30)
    else:
        done = requests.post(f"{url}/v2/props/sha512/blobs/uploads/", params={"digest": blob_digest}, data=data,
                             timeout=30)
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == blob_digest
    pulled = requests.get(f"{url}/v2/props/sha512/blobs/{blob_digest}", timeout=30)
    assert pulled.status_code == 200 and pulled.content == data
    assert pulled.headers["Docker-Content-Digest"] == blob_digest
