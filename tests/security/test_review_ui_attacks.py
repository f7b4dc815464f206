"""A hostile review of the web UI (2026-12-03): pushed content the pages could not render, form
bodies read whole whatever their length, a genuine form refused after its session renewed, and a
repository page whose cost grew with the manifests it summarized."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Callable

import pytest
import requests

from tests.support.pusher import OCI_MANIFEST, digest
from tests.support.stack import RunningStack

ADMIN = "ui-review-admin-1"
USER, PASSWORD = "ui-review-user", "ui-review-password-1"


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN, "WHARF_BCRYPT_ROUNDS": "4"})
    stack.admin(ADMIN, "user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    return stack


def _auth(stack: RunningStack, repository: str) -> dict[str, str]:
    scope = f"repository:{repository}:pull,push"
    answer = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": scope}, auth=(USER, PASSWORD),
                          timeout=10)
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def _blob(stack: RunningStack, repository: str, data: bytes) -> str:
    answer = requests.post(f"{stack.url}/v2/{repository}/blobs/uploads/", params={"digest": digest(data)}, data=data,
                           headers=_auth(stack, repository), timeout=30)
    assert answer.status_code == 201, answer.text
    return digest(data)


def _image(stack: RunningStack, repository: str, tag: str, config: bytes, **fields: object) -> str:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": _blob(stack, repository, config), "size": len(config)},
                       **fields}).encode()
    answer = requests.put(f"{stack.url}/v2/{repository}/manifests/{tag}", data=body, timeout=30,
                          headers={**_auth(stack, repository), "Content-Type": OCI_MANIFEST})
    assert answer.status_code == 201, answer.text
    return digest(body)


def _log_since(stack: RunningStack, offset: int) -> str:
    return stack.log_path.read_bytes()[offset:].decode(errors="replace")


def _csrf(page: requests.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def _signed_in(stack: RunningStack) -> requests.Session:
    browser = requests.Session()
    form = browser.get(f"{stack.url}/ui/login", timeout=10)
    answer = browser.post(f"{stack.url}/ui/login", data={"csrf": _csrf(form), "username": USER, "password": PASSWORD},
                          headers={"Origin": stack.url}, allow_redirects=False, timeout=10)
    assert answer.status_code == 303, answer.text
    return browser


def test_a_config_nested_too_deeply_for_the_parser_still_shows_its_page(stack: RunningStack) -> None:
    """Only manifests are checked at push; a config blob is any bytes. JSON nested deeper than
    Python's parser goes made the image's page a 500, with a traceback logged per view."""
    repository = f"{USER}/deep"
    logged = stack.log_path.stat().st_size
    deep = b'{"architecture":"amd64","os":"linux","config":{"Labels":{"x":' + b"[" * 200000 + b"]" * 200000 + b"}}}"
    _image(stack, repository, "deep", deep)
    near = ('{"os":"linux","config":{"Entrypoint":[' + "[" * 990 + "]" * 990 + "]}}").encode()
    _image(stack, repository, "near", near)
    browser = _signed_in(stack)
    for tag in ("deep", "near"):
        page = browser.get(f"{stack.url}/ui/manifest", params={"name": repository, "ref": tag}, timeout=30)
        assert page.status_code == 200, (tag, page.text[-500:])
        assert 'id="manifest-digest"' in page.text
    assert "a web UI page failed" not in _log_since(stack, logged)


def _raw_post(stack: RunningStack, path: str, head: str, body: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection((stack.host.split(":")[0], stack.port), timeout=timeout) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: {stack.host}\r\nOrigin: {stack.url}\r\n"
                     f"Content-Type: application/x-www-form-urlencoded\r\n{head}\r\n".encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = conn.recv(4096)
            if not piece:
                break
            answer += piece
        return answer


def test_a_ui_form_body_is_bounded_and_refused_unread(stack: RunningStack) -> None:
    """Flask reads an urlencoded form whole, whatever its length: a 300 MB sign-in took a gateway
    worker from 175 to 706 MB. Now a length over the bound is refused at once (nothing read), and a
    chunked body is cut off as it passes the bound."""
    logged = stack.log_path.stat().st_size
    started = time.monotonic()
    for path in ("/ui/login", "/ui/delete", "/ui/logout"):
        answer = _raw_post(stack, path, "Content-Length: 300000000\r\n", b"username=a")
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
    assert time.monotonic() - started < 10
    piece = b"x" * 8192
    chunked = b"9\r\nusername=\r\n" + (b"%x\r\n%s\r\n" % (len(piece), piece)) * 20 + b"0\r\n\r\n"
    answer = _raw_post(stack, "/ui/login", "Transfer-Encoding: chunked\r\n", chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Framing that cannot be read is the client's error, not a 500 with a traceback.
    answer = _raw_post(stack, "/ui/login", "Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert "a web UI page failed" not in _log_since(stack, logged)
    # An ordinary form still goes through.
    assert _signed_in(stack).get(f"{stack.url}/", timeout=10).status_code == 200


def test_a_form_loaded_before_the_access_token_expired_still_posts(stack: RunningStack) -> None:
    """A post whose session had to renew its access token (older than WHARF_TOKEN_TTL, 5 minutes)
    failed the CSRF check once: the delete confirmation or the sign-out button answered 403."""
    repository = f"{USER}/renewed"
    _image(stack, repository, "v1", b'{"os":"linux"}')
    browser = _signed_in(stack)
    form = browser.get(f"{stack.url}/ui/delete", params={"name": repository, "ref": "v1"}, timeout=10)
    cookie = browser.cookies.get("wharf_ui")
    assert cookie
    fields = json.loads(base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)))
    expired = base64.urlsafe_b64encode(json.dumps({**fields, "t": "an.expired.token"}).encode()).decode().rstrip("=")
    answer = requests.post(f"{stack.url}/ui/delete", data={"csrf": _csrf(form), "name": repository, "ref": "v1"},
                           cookies={"wharf_ui": expired}, headers={"Origin": stack.url}, allow_redirects=False,
                           timeout=10)
    assert answer.status_code == 303, answer.text[-400:]
    assert "wharf_ui=" in answer.headers.get("Set-Cookie", "")  # the renewed token, for the next page
    # A session the request did not bring still cannot post, renewed or not.
    assert requests.post(f"{stack.url}/ui/delete", data={"csrf": _csrf(form), "name": repository, "ref": "v1"},
                         headers={"Origin": stack.url}, allow_redirects=False, timeout=10).status_code == 403


def test_a_repository_page_reads_a_bounded_amount_of_manifests(stack: RunningStack) -> None:
    """Each tag row read and parsed its manifest on every view: 100 tags of a 4 MiB manifest cost a
    gateway worker ~5.5 s of CPU per view. Now a view reads at most about 4 MiB of manifests it has
    not summarized before; the rows past that show no size until a later view reads them."""
    repository = f"{USER}/heavy"
    layer = _blob(stack, repository, b"x")
    descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}] * 9000
    for number in range(6):
        _image(stack, repository, f"t{number}", b'{"os":"linux"}', layers=descriptors,
               annotations={"n": str(number)})
    page = _signed_in(stack).get(f"{stack.url}/ui/repository", params={"name": repository}, timeout=60)
    assert page.status_code == 200
    sizes = re.findall(r'<td class="num">(.*?)</td>', page.text)
    assert len(sizes) == 6
    unread = sum('title="not read' in s for s in sizes)
    assert 0 < unread < 6, sizes  # each manifest is ~1.4 MB: three fit the budget


def test_the_referrers_tree_shows_a_bounded_part_of_each_referrers_annotations(stack: RunningStack) -> None:
    """The tree under an image showed every annotation of every referrer, whole: 66 referrers of
    3.5 MB of annotations each (pushed once) made each view of their subject ~1.6 GB of a gateway
    worker's memory. Now 16 per referrer, each cut to 256 characters, and a link to the rest."""
    repository = f"{USER}/signed"
    subject = _image(stack, repository, "v1", b'{"os":"linux"}')
    size = len(requests.get(f"{stack.url}/v2/{repository}/manifests/v1", timeout=10,
                            headers={**_auth(stack, repository), "Accept": OCI_MANIFEST}).content)
    annotations = {f"note.{number:03d}": "y" * 5000 for number in range(40)}
    _image(stack, repository, "sig", b"{}", artifactType="application/x-review", annotations=annotations,
           subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": size})
    page = _signed_in(stack).get(f"{stack.url}/ui/manifest", params={"name": repository, "ref": "v1"}, timeout=30)
    assert page.status_code == 200
    tree = page.text.split('id="referrers"', 1)[1].split("</div>", 1)[0]
    assert tree.count("<dt>note.") == 16 and "and 24 more annotations" in tree
    assert "y" * 257 not in tree and "y" * 256 + "…" in tree


def test_a_long_static_file_name_is_not_found_not_an_error(stack: RunningStack) -> None:
    """Any name the static route's pattern allows reached the filesystem: one over 255 bytes was a
    500 with a traceback logged per request (a log flood at will), and every name asked for was
    kept in an unbounded cache. Now only the shipped files are looked up."""
    logged = stack.log_path.stat().st_size
    for name in ("a" * 300 + ".css", "b" * 4000 + ".js", "nothing.css", "ui.css.bak"):
        answer = requests.get(f"{stack.url}/ui/static/{name}", timeout=10)
        assert answer.status_code == 404, (name[:20], answer.status_code)
    shipped = requests.get(f"{stack.url}/ui/static/ui.css", timeout=10)
    assert shipped.status_code == 200 and shipped.headers["Content-Type"].startswith("text/css")
    assert "unhandled error" not in _log_since(stack, logged)


def test_the_token_endpoints_form_is_bounded_and_refused_unread(stack: RunningStack) -> None:
    """``POST /token`` is open to anyone; its form was read whole: one anonymous 900 MB post took
    a gateway worker to 3.6 GB. The OAuth2 form is held to the web UI's bound: a longer
    Content-Length is refused at once, a chunked body as it passes the bound (413, SIZE_INVALID)."""
    started = time.monotonic()
    answer = _raw_post(stack, "/token", "Content-Length: 900000045\r\n", b"grant_type=password&username=")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"SIZE_INVALID"' in answer
    assert time.monotonic() - started < 10
    piece = b"a" * 8192
    chunked = b"1d\r\ngrant_type=password&username=\r\n" + (b"%x\r\n%s\r\n" % (len(piece), piece)) * 20 + b"0\r\n\r\n"
    answer = _raw_post(stack, "/token", "Transfer-Encoding: chunked\r\n", chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # An ordinary OAuth2 form still gets its token.
    answer = requests.post(f"{stack.url}/token", data={"grant_type": "password", "service": "wharf",
                                                        "username": USER, "password": PASSWORD}, timeout=10)
    assert answer.status_code == 200 and answer.json()["access_token"]


def _admin_push(stack: RunningStack, repository: str, config: bytes) -> None:
    scope = f"repository:{repository}:pull,push"
    token = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": scope}, auth=("admin", ADMIN),
                         timeout=10).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    answer = requests.post(f"{stack.url}/v2/{repository}/blobs/uploads/", params={"digest": digest(config)},
                           data=config, headers=headers, timeout=30)
    assert answer.status_code == 201, answer.text


def _usage_row(page: str, namespace: str) -> str:
    found = re.search(r'<tr><td><a class="usage-namespace"[^>]*>' + namespace + r"</a>.*?</tr>", page, re.S)
    assert found, page[-2000:]
    return found.group(0)


def test_the_usage_page_does_not_tell_whether_a_namespace_holds_hidden_repositories(stack: RunningStack) -> None:
    """The usage page gave a namespace's own figures and quota when the repositories a user could
    see were all the namespace held, and "(N visible)" otherwise: the difference told the user
    that a namespace held repositories hidden from them. Now whether a row is the namespace's own
    is the policy's answer for a made-up name, the same whatever the namespace holds."""
    _admin_push(stack, "mixed/shown", b"shown config")
    _admin_push(stack, "mixed/hidden-secret", b"hidden config")
    _admin_push(stack, "alone/shown", b"alone config")
    for namespace in ("mixed", "alone", "whole"):
        stack.admin(ADMIN, "quota", "set", namespace, "10MiB")
    for repository in ("mixed/shown", "alone/shown"):
        stack.admin(ADMIN, "grant", USER, repository, "pull")
    _admin_push(stack, "whole/one", b"whole config")
    stack.admin(ADMIN, "grant", USER, "whole/*", "pull")
    browser = _signed_in(stack)
    page = browser.get(f"{stack.url}/ui/usage", timeout=10).text
    assert "hidden-secret" not in page
    mixed, alone = (_usage_row(page, n).replace(n, "NS") for n in ("mixed", "alone"))
    strip = re.compile(r'data-bytes="\d+"|>[\d.]+ (?:B|KiB)<')
    assert strip.sub("", mixed) == strip.sub("", alone)
    assert "you may see)" in mixed and "of 10.0 MiB" not in mixed
    assert "of 10.0 MiB" in _usage_row(page, "whole")  # a grant for the whole namespace: its own figures
    for namespace, whole in (("mixed", False), ("alone", False), ("whole", True)):
        one = browser.get(f"{stack.url}/ui/usage", params={"namespace": namespace}, timeout=10).text
        assert ("Quota</dt>" in one) is whole, (namespace, one[-1500:])
        assert "hidden-secret" not in one


def test_the_tag_filter_searches_past_the_first_page_of_tags(stack: RunningStack) -> None:
    """The repository page filtered only the 100 tags of its current page: with 250 tags, a filter
    for the last ones showed "No tags match" (and "More tags"). Now a filtered page reads on until a
    page of matches (at most _FILTER_SCAN tags a view), and its "More tags" resumes after the last
    tag it examined."""
    repository = f"{USER}/manytags"
    headers = {**_auth(stack, repository), "Content-Type": OCI_MANIFEST}
    config = b'{"os":"linux"}'
    _blob(stack, repository, config)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": digest(config), "size": len(config)}}).encode()
    tags = [f"t{i:03d}" for i in range(230)] + [f"zz-match-{i:03d}" for i in range(120)]
    with requests.Session() as session:
        for tag in tags:
            answer = session.put(f"{stack.url}/v2/{repository}/manifests/{tag}", data=body, headers=headers,
                                 timeout=30)
            assert answer.status_code == 201, answer.text
    browser = _signed_in(stack)

    def shown(**params: str) -> tuple[list[str], str]:
        page = browser.get(f"{stack.url}/ui/repository", params={"name": repository, **params}, timeout=30)
        assert page.status_code == 200, page.text[-500:]
        more = re.search(r'href="/ui/repository\?([^"]+)">More tags', page.text)
        return re.findall(r'<tr data-text="([^"]+)"', page.text), (more.group(1).replace("&amp;", "&") if more else "")

    first, more = shown(filter="zz-match")
    assert first == [f"zz-match-{i:03d}" for i in range(100)], first[:5]
    assert more
    rest, more = shown(**dict(urllib.parse.parse_qsl(more)))
    assert rest == [f"zz-match-{i:03d}" for i in range(100, 120)] and not more
    # Unfiltered: a page of 100, as before.
    everything, more = shown()
    assert everything == tags[:100] and more
