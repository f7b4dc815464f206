"""Property tests of what the generic fuzzer cannot aim at (issue 20): Range and Content-Range
arithmetic against a model of docs/api.md, and manifests at the edges of JSON and of
docs/formats.md, sent to the running stack. Never a 5xx; a refused request stores nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.properties import CI, CONFIG_TYPE, OCI_MANIFEST, catalog, digest, push_blob, tags
from tests.support.stack import RunningStack

pytestmark = pytest.mark.e2e

# ---------------------------------------------------------------- blob reads with Range


def content_of(size: int) -> bytes:
    """Deterministic bytes of ``size``, distinct for every size (so every size is its own blob)."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{size}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


_pushed: set[tuple[str, int]] = set()


def stored_blob(url: str, size: int) -> tuple[bytes, str]:
    """The blob of ``size`` in props/range, pushed the first time it is asked for."""
    data = content_of(size)
    if (url, size) not in _pushed:
        push_blob(url, "props/range", data)
        _pushed.add((url, size))
    return data, digest(data)


_SINGLE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def expected_read(header: str, size: int) -> tuple[int, tuple[int, int] | None]:
    """docs/api.md, "Range handling": (status, (first, last) of a 206)."""
    found = _SINGLE.fullmatch(header.strip())
    if not found or found.groups() == ("", ""):
        return 200, None  # malformed or several ranges: ignored
    first_s, last_s = found.groups()
    if first_s:
        first = int(first_s)
        if first >= size or (last_s and int(last_s) < first):
            return 416, None
        return 206, (first, min(int(last_s), size - 1) if last_s else size - 1)
    suffix = int(last_s)
    if suffix == 0 or size == 0:
        return 416, None
    return 206, (max(size - suffix, 0), size - 1)


sizes = st.one_of(st.sampled_from([0, 1, 2, 1023, 1024, 1025]), st.integers(0, 700))


@st.composite
def range_headers(draw: st.DrawFn, size: int) -> str:
    near = st.one_of(st.integers(0, size + 3), st.sampled_from([0, size - 1, size, size + 1, 10**30]).filter(
        lambda n: n >= 0))
    number = near.map(str) | near.map(lambda n: "000" + str(n))
    kind = draw(st.sampled_from(["closed", "closed", "open", "suffix", "multi", "malformed"]))
    if kind == "closed":
        return f"bytes={draw(number)}-{draw(number)}"
    if kind == "open":
        return f"bytes={draw(number)}-"
    if kind == "suffix":
        return f"bytes=-{draw(number)}"
    if kind == "multi":
        return f"bytes={draw(number)}-{draw(number)},{draw(number)}-{draw(number)}"
    return draw(st.sampled_from(["bytes=", "bytes=-", "bytes=--1", "bytes=1", "bytes=+1-2", "bytes=0x1-2",
                                 "Bytes=0-1", "bytes 0-1", "items=0-1", "bytes=0-1-2", "bytes= 0-1",
                                 "bytes=0-1,", "bytes=-1-", "bytes=a-b", "=0-1", "bytes=\u00b9-2"]))


@settings(CI, max_examples=60)
@given(data=st.data(), size=sizes)
def test_blob_ranges_follow_the_model(property_stack: RunningStack, data: st.DataObject, size: int) -> None:
    url = property_stack.url
    blob, blob_digest = stored_blob(url, size)
    header = data.draw(range_headers(size), label="Range")
    response = requests.get(f"{url}/v2/props/range/blobs/{blob_digest}", headers={"Range": header}, timeout=30)
    status, span = expected_read(header, size)
    assert response.status_code == status, (header, size, response.status_code, response.text[:200])
    if status == 206:
        assert span is not None
        first, last = span
        assert response.content == blob[first:last + 1], (header, size)
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(response.headers["Content-Length"]) == last - first + 1
    elif status == 200:
        assert response.content == blob and "Content-Range" not in response.headers
    else:
        assert response.headers["Content-Range"] == f"bytes */{size}" and response.content == b""
    head = requests.head(f"{url}/v2/props/range/blobs/{blob_digest}", headers={"Range": header}, timeout=30)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size)


# ---------------------------------------------------------------- upload chunks with Content-Range

# One step of a chunked upload: what it claims against where the session stands.
steps = st.one_of(
    st.tuples(st.just("right"), st.integers(0, 400), st.sampled_from(["{f}-{l}", "bytes={f}-{l}", "bytes {f}-{l}",
                                                                        "{f}-{l}/*", "{f}-{l}/999999", None])),
    st.tuples(st.just("gap"), st.integers(1, 50), st.integers(1, 40)),
    st.tuples(st.just("overlap"), st.integers(1, 50), st.integers(1, 40)),
    st.tuples(st.just("wrong-length"), st.sampled_from([-2, -1, 1, 3]), st.integers(1, 40)),
    st.tuples(st.just("reversed"), st.integers(1, 5), st.integers(1, 40)),
    st.tuples(st.just("huge-offset"), st.sampled_from([2**63 - 1, 2**63, 10**20]), st.integers(1, 10)),
    st.tuples(st.just("malformed"), st.sampled_from(["0-", "-5", "a-b", "0-1/", "0-1/x", "bytes:0-1", "0 - 1",
                                                     "0-1-2", "items 0-1", "0-1,2-3", "0x0-1"]), st.integers(1, 10)),
)


def _range_after(offset: int) -> str:
    return f"0-{max(offset - 1, 0)}"


@settings(CI, max_examples=30)
@given(intended=st.integers(0, 1500).map(content_of), plan=st.lists(steps, max_size=8),
       finish_with_body=st.booleans())
@example(intended=content_of(10), plan=[("huge-offset", 2**63, 3)], finish_with_body=False)
def test_upload_offsets_advance_only_on_valid_chunks(property_stack: RunningStack, intended: bytes,
                                                     plan: list[tuple[str, object, object]],
                                                     finish_with_body: bool) -> None:
    url = property_stack.url
    started = requests.post(f"{url}/v2/props/chunks/blobs/uploads/", timeout=30)
    assert started.status_code == 202
    location = started.headers["Location"]
    offset = 0
    for kind, a, b in plan:
        headers: dict[str, str] = {}
        if kind == "right":
            assert isinstance(a, int)
            body = intended[offset:offset + a]
            if b is None or not body:  # a streamed chunk, or an empty one (no range can say "nothing")
                expected = 202
            else:
                assert isinstance(b, str)
                headers["Content-Range"] = b.format(f=offset, l=offset + len(body) - 1)
                expected = 202
        else:
            assert isinstance(b, int)
            body = b"\xee" * b  # never the intended bytes: a chunk applied by mistake shows in the blob
            if kind == "malformed":
                assert isinstance(a, str)
                headers["Content-Range"] = a
                expected = 400
            else:
                assert isinstance(a, int)
                behind = offset - a if offset >= a else offset + a  # an overlap, or a gap at the start
                first = {"gap": offset + a, "overlap": behind, "wrong-length": offset,
                         "reversed": offset + a, "huge-offset": a}[kind]
                last = {"wrong-length": first + b - 1 + a, "reversed": offset + a - 1}.get(kind, first + b - 1)
                headers["Content-Range"] = f"{first}-{last}"
                expected = 202 if (first == offset and last - first + 1 == len(body)) else 416
        response = requests.patch(url + location, data=body, headers=headers, timeout=30)
        what = (kind, a, b, headers, offset)
        assert response.status_code == expected, (what, response.status_code, response.text[:300])
        if expected == 202:
            offset += len(body)
            location = response.headers["Location"]
        else:
            assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID", what
        if expected != 400:
            assert response.headers["Range"] == _range_after(offset), what
        status = requests.get(url + location, timeout=30)
        assert status.status_code == 204 and status.headers["Range"] == _range_after(offset), what
    rest = intended[offset:]
    if finish_with_body and rest:
        done = requests.put(url + location, params={"digest": digest(intended)}, data=rest, timeout=30,
                            headers={"Content-Range": f"{offset}-{len(intended) - 1}"})
    else:
        if rest:
            patched = requests.patch(url + location, data=rest, timeout=30)
            assert patched.status_code == 202
            location = patched.headers["Location"]
        done = requests.put(url + location, params={"digest": digest(intended)}, timeout=30)
    assert done.status_code == 201, done.text
    pulled = requests.get(f"{url}/v2/props/chunks/blobs/{digest(intended)}", timeout=30)
    assert pulled.status_code == 200 and pulled.content == intended


# ---------------------------------------------------------------- manifests

_LAYER = "application/vnd.oci.image.layer.v1.tar"


class Stored:
    """The blobs a manifest may reference in props/manifests: a config and two layers."""

    def __init__(self, url: str) -> None:
        self.config = b'{"architecture":"arm64","os":"linux"}'
        self.layers = [b"layer one", b"layer two, a little longer"]
        self.config_digest = push_blob(url, "props/manifests", self.config)
        self.layer_digests = [push_blob(url, "props/manifests", layer) for layer in self.layers]

    def config_descriptor(self, size_delta: int = 0) -> dict[str, object]:
        return {"mediaType": CONFIG_TYPE, "digest": self.config_digest, "size": len(self.config) + size_delta}

    def layer_descriptor(self, i: int, size_delta: int = 0) -> dict[str, object]:
        return {"mediaType": _LAYER, "digest": self.layer_digests[i], "size": len(self.layers[i]) + size_delta}


@pytest.fixture(scope="module")
def stored(property_stack: RunningStack) -> Stored:
    return Stored(property_stack.url)


# Odd Unicode for annotations: RTL and zero-width marks, NUL, non-BMP, combining marks, and lone
# surrogates (which no UTF-8 text can hold: they must be refused, not stored).
odd_text = st.text(st.one_of(st.sampled_from(["\u200f", "\u202e", "\u200b", "\x00", "\ufeff", "\U0001f433", "\u0301",
                                              "\uffff", "\ud800", "\udfff", "\\", '"']),
                             st.characters(codec="utf-8")), max_size=12)


def has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    return False


@st.composite
def manifests(draw: st.DrawFn, stored: Stored) -> tuple[bytes, str, str]:
    """(body, Content-Type, what the registry must answer: "201" or an error code)."""
    kind = draw(st.sampled_from(["valid", "annotations", "wrong-size", "unknown-blob", "bad-digest", "many-layers",
                                 "conflicting-sizes", "deep", "duplicate-key", "numbers", "media-types",
                                 "not-json"]))
    base: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": stored.config_descriptor(),
                               "layers": [stored.layer_descriptor(i) for i in draw(st.lists(st.sampled_from([0, 1]),
                                                                                            max_size=3))]}
    content_type = OCI_MANIFEST
    if kind == "valid":
        if draw(st.booleans()):
            base["config"] = {**stored.config_descriptor(),
                              "data": base64.b64encode(stored.config).decode()}
        return json.dumps(base).encode(), content_type, "201"
    if kind == "annotations":
        annotations = draw(st.dictionaries(odd_text, odd_text, max_size=4))
        base["annotations"] = annotations
        ascii_only = draw(st.booleans())
        body = json.dumps(base, ensure_ascii=ascii_only)
        if not ascii_only and has_lone_surrogate(annotations):
            # Raw surrogates are not even UTF-8.
            return body.encode("utf-8", "surrogatepass"), content_type, "MANIFEST_INVALID"
        # Escaped, "\ud800\udc00" is one character and "\ud800" alone is JSON that no UTF-8 text can
        # hold; two keys may also turn out to be one.
        read = json.loads(json.dumps(annotations))
        refused = has_lone_surrogate(read) or len(read) != len(annotations)
        return body.encode(), content_type, "MANIFEST_INVALID" if refused else "201"
    if kind == "wrong-size":
        delta = draw(st.sampled_from([-1, 1, 1000]))
        if draw(st.booleans()) or not base["layers"]:
            base["config"] = stored.config_descriptor(delta)
        else:
            base["layers"] = [stored.layer_descriptor(0, delta)]
        return json.dumps(base).encode(), content_type, "MANIFEST_INVALID"
    if kind == "unknown-blob":
        unknown = digest(draw(st.binary(min_size=1, max_size=8)) + b"\x00never pushed")
        base["layers"] = [stored.layer_descriptor(0), {"mediaType": _LAYER, "digest": unknown, "size": 3}]
        return json.dumps(base).encode(), content_type, "MANIFEST_BLOB_UNKNOWN"
    if kind == "bad-digest":
        value = draw(st.sampled_from(["sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32, "sha256",
                                      "", "sha512:" + "a" * 64]))
        base["config"] = {**stored.config_descriptor(), "digest": value}
        return json.dumps(base).encode(), content_type, "MANIFEST_INVALID"
    if kind == "many-layers":
        count = draw(st.sampled_from([1000, 3000, 6000]))
        nobody_has = draw(st.booleans())
        if nobody_has:  # thousands of distinct blobs nobody has: the refusal must still be whole
            layers = [{"mediaType": _LAYER, "digest": "sha256:%064x" % (i + 1), "size": 1} for i in range(count)]
        else:
            layers = [stored.layer_descriptor(i % 2) for i in range(count)]
        base["layers"] = layers
        return json.dumps(base).encode(), content_type, "MANIFEST_BLOB_UNKNOWN" if nobody_has else "201"
    if kind == "conflicting-sizes":
        base["layers"] = [stored.layer_descriptor(0), stored.layer_descriptor(0, 1)]
        return json.dumps(base).encode(), content_type, "MANIFEST_INVALID"
    if kind == "deep":
        depth = draw(st.sampled_from([50, 200, 600, 2000, 20000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
        body = json.dumps(base)[:-1] + f', "x-deep": {inner}}}'
        # The parser's limit is about 1,000 levels (docs/formats.md); either side of it is answered.
        return body.encode(), content_type, "201" if depth <= 600 else "MANIFEST_INVALID"
    if kind == "duplicate-key":
        text = json.dumps(base)
        where = draw(st.sampled_from(["top", "config", "annotations"]))
        if where == "top":
            text = text[:-1] + ', "layers": []}'
        elif where == "config":
            text = text.replace('"size": ', '"size": 1, "size": ', 1)
        else:
            text = text[:-1] + ', "annotations": {"k": "1", "k": "2"}}'
        return text.encode(), content_type, "MANIFEST_INVALID"
    if kind == "numbers":
        field, value = draw(st.sampled_from([
            ("schemaVersion", "2.0"), ("schemaVersion", "2e0"), ("schemaVersion", "true"), ("schemaVersion", "1"),
            ("schemaVersion", '"2"'), ("schemaVersion", "20000000000000000000000"), ("size", "-1"),
            ("size", "9223372036854775808"), ("size", "1e3"), ("size", "37.0"), ("size", "1" * 5000),
            ("x-nan", "NaN"), ("x-inf", "Infinity"), ("x-inf", "-Infinity"), ("x-big", "1e400"),
            ("x-big", "-123456789012345678901234567890"),
        ]))
        text = json.dumps(base)
        if field == "schemaVersion":
            text = text.replace('"schemaVersion": 2', f'"schemaVersion": {value}', 1)
        elif field == "size":
            text = text.replace(f'"size": {len(stored.config)}', f'"size": {value}', 1)
        else:
            text = text[:-1] + f', "{field}": {value}}}'
        valid = field == "x-big"  # JSON numbers, if beyond any machine type, in a field nobody reads
        return text.encode(), content_type, "201" if valid else "MANIFEST_INVALID"
    if kind == "media-types":
        known = [OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                 "application/vnd.docker.distribution.manifest.v2+json"]
        declared = draw(st.sampled_from([None, "", *known, "application/vnd.docker.distribution.manifest.v1+json",
                                         "text/plain"]))
        content_type = draw(st.sampled_from(["", "application/json", "application/octet-stream", *known,
                                             OCI_MANIFEST + "; charset=utf-8", "text/plain"]))
        if declared is None:
            del base["mediaType"]
        else:
            base["mediaType"] = declared
        # One body, one Content-Type: the "nothing stored" check below reads the body's digest.
        base["annotations"] = {"content-type": content_type}
        return json.dumps(base).encode(), content_type, decided(content_type, declared)
    not_json = draw(st.sampled_from([b"", b"[]", b"null", b"{", b'"manifest"', b"\xff\xfe{}", b"{}",
                                     json.dumps(base).encode("utf-16"), b"\xef\xbb\xbf" + json.dumps(base).encode(),
                                     json.dumps(base).encode() + b" trailing", json.dumps(base).encode()[:-1]]))
    return not_json, content_type, "MANIFEST_INVALID"


def decided(content_type: str, declared: str | None) -> str:
    """docs/formats.md, "How the media type is decided", for an image manifest body."""
    types = {OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
             "application/vnd.docker.distribution.manifest.v2+json",
             "application/vnd.docker.distribution.manifest.list.v2+json"}
    content_type = content_type.split(";", 1)[0].strip()
    if content_type in types:
        chosen = content_type if not declared or declared == content_type else None
    elif declared in types:
        chosen = declared
    elif declared or content_type not in ("", "application/json", "application/octet-stream"):
        chosen = None
    else:
        chosen = OCI_MANIFEST  # by shape: the body has a config
    # An image manifest body read as an index has no "manifests" list.
    return "201" if chosen in (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json") \
        else "MANIFEST_INVALID"


@settings(CI, max_examples=60)
@given(data=st.data())
def test_manifest_bodies_are_stored_exactly_or_refused(property_stack: RunningStack, stored: Stored,
                                                      data: st.DataObject) -> None:
    url = property_stack.url
    body, content_type, want = data.draw(manifests(stored), label="manifest")
    before_tags, before_catalog = tags(url, "props/manifests"), catalog(url)
    tag = "t" + hashlib.sha256(body).hexdigest()[:20]
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.put(f"{url}/v2/props/manifests/manifests/{tag}", data=body, headers=headers, timeout=60)
    assert response.status_code < 500, (want, response.status_code, response.text[:300])
    if want == "201":
        assert response.status_code == 201, (response.status_code, response.text[:300])
        pulled = requests.get(f"{url}/v2/props/manifests/manifests/{tag}", timeout=30)
        assert pulled.status_code == 200 and pulled.content == body
        assert pulled.headers["Docker-Content-Digest"] == digest(body)
        return
    assert response.status_code == 400, (want, response.status_code, response.text[:300])
    error = response.json()["errors"][0]
    assert error["code"] == want, (want, error)
    if want == "MANIFEST_BLOB_UNKNOWN":
        assert error["detail"]["missing"], error
    assert tags(url, "props/manifests") == before_tags
    assert catalog(url) == before_catalog
    assert requests.head(f"{url}/v2/props/manifests/manifests/{digest(body)}", timeout=30).status_code == 404
