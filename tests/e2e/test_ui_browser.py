"""Issue 21: the web UI in a real browser (Debian's chromium through its chromedriver, by Selenium).

A token-mode stack holds a multi-arch image pushed by skopeo, a cosign signature (an OCI 1.1
referrer) and another artifact that refer to one of its platforms, an image whose label and
annotations carry ``<script>``, a public repository and someone else's private one. The tests sign in, search, open the
repository, the tag, a platform, its layers and referrers, delete a tag, and compare what the
pages show with what the registry's API answers; they check what a user may not see or delete,
that pushed markup is shown as text and never runs, and that a cross-origin delete is refused.
Screenshots of each page go to $WHARF_UI_SCREENSHOTS, else the test's temporary directory.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.e2e.images import OCI_MANIFEST, canonical_json, sha256, write_oci_index_layout
from tests.e2e.test_cosign import COSIGN_MODULE, Cosign
from tests.e2e.test_cosign import OFFLINE as COSIGN_OFFLINE
from tests.e2e.test_skopeo import Skopeo
from tests.support.stack import RunningStack
from tests.support.tools import missing, require_tool

pytestmark = pytest.mark.e2e

ADMIN = "ui-admin-pw-1"
USER, PASSWORD = "carol", "carol-secret-1"
OTHER, OTHER_PASSWORD = "dave", "dave-secret-1"
SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"
COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def _token(stack: RunningStack, user: str, password: str, repository: str) -> str:
    answer = requests.get(f"{stack.url}/token", params={"service": "wharf",
                                                          "scope": f"repository:{repository}:pull,push,delete"},
                          auth=(user, password), timeout=10)
    answer.raise_for_status()
    return str(answer.json()["token"])


class Pusher:
    """Raw API pushes with a token for one repository."""

    def __init__(self, stack: RunningStack, user: str, password: str, repository: str) -> None:
        self.base = f"{stack.url}/v2/{repository}"
        self.headers = {"Authorization": "Bearer " + _token(stack, user, password, repository)}

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = sha256(data)
        answer = requests.post(f"{self.base}/blobs/uploads/", params={"digest": digest}, data=data,
                               headers=self.headers, timeout=10)
        assert answer.status_code == 201, answer.text
        return {"digest": digest, "size": len(data)}

    def manifest(self, body: bytes, reference: str, media_type: str = OCI_MANIFEST) -> str:
        answer = requests.put(f"{self.base}/manifests/{reference}", data=body,
                              headers={**self.headers, "Content-Type": media_type}, timeout=10)
        assert answer.status_code == 201, answer.text
        return str(answer.headers["Docker-Content-Digest"])

    def get(self, path: str, accept: str = "") -> requests.Response:
        headers = {**self.headers, **({"Accept": accept} if accept else {})}
        answer = requests.get(f"{self.base}/{path}", headers=headers, timeout=10)
        answer.raise_for_status()
        return answer


def _image(pusher: Pusher, tag: str, labels: dict[str, str], annotations: dict[str, str]) -> str:
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {"Labels": labels},
                             "history": [{"created_by": labels.get("evil", "step")}]})
    layer = os.urandom(1000)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          **pusher.blob(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           **pusher.blob(layer)}],
                               "annotations": annotations})
    return pusher.manifest(manifest, tag)


@pytest.fixture(scope="module")
def registry(start_stack: Callable[..., RunningStack], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack and what was pushed to it."""
    skopeo = Skopeo(require_tool("skopeo"), tmp_path_factory.mktemp("skopeo-home"))
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN, "WHARF_BCRYPT_ROUNDS": "4"})
    env = dict(os.environ, WHARF_ADMIN_PASSWORD=ADMIN, WHARF_DATA_DIR=str(stack.data_dir))
    for user, password in ((USER, PASSWORD), (OTHER, OTHER_PASSWORD)):
        subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "user", "add", user, "--password-stdin"],
                       input=password + "\n", env=env, check=True, capture_output=True, text=True, timeout=60)
    stack.admin(ADMIN, "repo", "public", "library/*")
    layout = tmp_path_factory.mktemp("layout")
    image = write_oci_index_layout(layout)
    skopeo.copy(f"oci:{layout}:{image.tag}", f"docker://{stack.host}/{USER}/multi:v1", "--all",
                f"--dest-creds={USER}:{PASSWORD}")
    mine = Pusher(stack, USER, PASSWORD, f"{USER}/multi")
    mine.manifest(image.root, "old", image.media_type)
    amd64 = image.manifests["linux/amd64"]
    signature = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_TYPE,
        "config": {"mediaType": EMPTY_TYPE, **mine.blob(EMPTY)},
        "layers": [{"mediaType": "application/octet-stream", **mine.blob(b"a signature")}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": amd64, "size": len(image.objects[amd64])},
        "annotations": {"org.example.signed-by": "carol", "org.example.note": "<script>window.pwned = 2</script>"}})
    signature_digest = mine.manifest(signature, sha256(signature))
    # And a real cosign signature, stored as an OCI 1.1 referrer of the same manifest.
    cosign = Cosign(require_tool("cosign", f"go install {COSIGN_MODULE}"), tmp_path_factory.mktemp("cosign-home"))
    key, _ = cosign.key_pair("keys")
    cosign.run("login", stack.host, "-u", USER, "-p", PASSWORD)
    cosign.run("sign", "--yes", "--key", key, "--tlog-upload=false", "--registry-referrers-mode=oci-1-1",
               *COSIGN_OFFLINE, f"{stack.host}/{USER}/multi@{amd64}")
    evil = Pusher(stack, USER, PASSWORD, f"{USER}/xss")
    _image(evil, "v1", {"evil": "<script>window.pwned = 1</script>", "org.example.plain": "fine"},
           {"org.example.evil": "<img src=x onerror=\"window.pwned = 3\">"})
    _image(Pusher(stack, ADMIN_USER, ADMIN, "library/hello"), "v1", {"kind": "public"}, {})
    _image(Pusher(stack, OTHER, OTHER_PASSWORD, f"{OTHER}/secret"), "v1", {"kind": "private"}, {})
    return {"stack": stack, "image": image, "signature": signature_digest, "pusher": mine}


ADMIN_USER = "admin"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    chosen = os.environ.get("WHARF_UI_SCREENSHOTS")
    folder = pathlib.Path(chosen) if chosen else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium", "Debian package chromium")
    chromedriver = require_tool("chromedriver", "Debian package chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _by(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, css)


def _all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    return list(driver.find_elements(By.CSS_SELECTOR, css))


def _wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 10) -> Any:
    """Waits for ``condition``; an element the page re-rendered while the condition read it
    (stale) is looked up again on the next poll rather than failing the wait (seen on a loaded
    CI machine while the search results replaced the list)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def _sign_in(driver: Any, stack: RunningStack, user: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{stack.url}/")
    assert driver.current_url.endswith("/ui/login")
    _by(driver, "#username").send_keys(user)
    _by(driver, "#password").send_keys(password)
    _by(driver, "#sign-in").click()
    _wait(driver, lambda d: _all(d, "#account"))
    assert _by(driver, "#account").text == user


def _listed(driver: Any) -> list[str]:
    return [a.text for a in _all(driver, "#repositories a.repository")]


def test_a_user_browses_searches_opens_the_layers_and_referrers_and_deletes_a_tag(
        browser: Any, registry: dict[str, Any], shots: pathlib.Path) -> None:
    stack, image = registry["stack"], registry["image"]
    _sign_in(browser, stack, USER, PASSWORD)
    browser.save_screenshot(str(shots / "01-repositories.png"))
    # Their own and public repositories; never someone else's private one.
    assert _listed(browser) == [f"{USER}/multi", f"{USER}/xss", "library/hello"]

    _by(browser, "#search").send_keys("mul")
    _wait(browser, lambda d: _listed(d) == [f"{USER}/multi"])
    assert "q=mul" in browser.current_url
    browser.save_screenshot(str(shots / "02-search.png"))

    _by(browser, "#repositories a.repository").click()
    _wait(browser, lambda d: _all(d, "#tags"))
    tags = {row.find_element("css selector", "a.tag").text: row for row in _all(browser, "#tags tbody tr")}
    assert sorted(tags) == ["old", "v1"]
    assert "linux/amd64, linux/arm64" in tags["v1"].text
    assert tags["v1"].find_element("css selector", "code").get_attribute("title") == image.digest
    commands = [c.text for c in _all(browser, "code.command")]
    assert any(c.startswith(f"docker pull {stack.host}/{USER}/multi:") for c in commands)
    assert any(c.startswith("podman pull ") for c in commands) and any(c.startswith("wharf pull ") for c in commands)
    browser.save_screenshot(str(shots / "03-repository.png"))

    tags["v1"].find_element("css selector", "a.tag").click()
    _wait(browser, lambda d: _all(d, "#platforms"))
    assert _by(browser, "#manifest-digest").text == image.digest
    platforms = {a.text: a for a in _all(browser, "#platforms a.platform")}
    assert sorted(platforms) == ["linux/amd64", "linux/arm64"]
    browser.save_screenshot(str(shots / "04-index.png"))

    platforms["linux/amd64"].click()
    _wait(browser, lambda d: _all(d, "#layers"))
    manifest = registry["pusher"].get(f"manifests/{image.manifests['linux/amd64']}", OCI_MANIFEST).json()
    shown = [int(cell.get_attribute("data-bytes")) for cell in _all(browser, "#layers td.layer-size")]
    assert shown == [layer["size"] for layer in manifest["layers"]]
    assert len(_all(browser, "#layers svg.size-bar rect")) == len(manifest["layers"])
    assert "/bin/sh" in _by(browser, "#config").text
    assert len(_all(browser, "#history li")) == len(manifest["layers"])
    referrers = _by(browser, "#referrers").text
    assert SIGNATURE_TYPE in referrers and "org.example.signed-by" in referrers
    assert COSIGN_SIGNATURE in referrers  # cosign's signature, as the referrers API lists it
    listed = registry["pusher"].get(f"referrers/{image.manifests['linux/amd64']}").json()["manifests"]
    assert registry["signature"] in [m["digest"] for m in listed]
    assert sorted(m["artifactType"] for m in listed) == sorted([COSIGN_SIGNATURE, SIGNATURE_TYPE])
    assert all(m["digest"][:19] in referrers for m in listed)
    browser.save_screenshot(str(shots / "05-image-layers-referrers.png"))

    # Delete the tag "old", through the confirmation page.
    browser.get(f"{stack.url}/ui/repository?name={USER}/multi")
    row = next(r for r in _all(browser, "#tags tbody tr") if r.find_element("css selector", "a.tag").text == "old")
    row.find_element("css selector", "a.delete").click()
    _wait(browser, lambda d: _all(d, "#confirm-delete"))
    browser.save_screenshot(str(shots / "06-confirm-delete.png"))
    _by(browser, "#confirm-delete").click()
    _wait(browser, lambda d: _all(d, "#deleted"))
    assert [a.text for a in _all(browser, "#tags a.tag")] == ["v1"]
    assert registry["pusher"].get("tags/list").json()["tags"] == ["v1"]


def test_a_user_cannot_see_or_delete_what_they_may_not(browser: Any, registry: dict[str, Any],
                                                       shots: pathlib.Path) -> None:
    stack = registry["stack"]
    _sign_in(browser, stack, USER, PASSWORD)
    browser.get(f"{stack.url}/ui/repository?name=library/hello")
    assert [a.text for a in _all(browser, "#tags a.tag")] == ["v1"]
    assert not _all(browser, "#tags a.delete")  # pull only: no delete
    browser.get(f"{stack.url}/ui/delete?name=library/hello&ref=v1")
    assert "may not delete" in _by(browser, "#error-message").text
    browser.get(f"{stack.url}/ui/repository?name={OTHER}/secret")
    assert "may not read" in _by(browser, "#error-message").text
    browser.save_screenshot(str(shots / "07-not-allowed.png"))
    browser.get(f"{stack.url}/?q=secret")
    assert _all(browser, "#no-repositories")
    # The other user sees their own repository, and not carol's.
    _sign_in(browser, stack, OTHER, OTHER_PASSWORD)
    assert _listed(browser) == [f"{OTHER}/secret", "library/hello"]
    _by(browser, "#logout").click()
    _wait(browser, lambda d: d.current_url.endswith("/ui/login"))


def test_pushed_markup_is_shown_as_text_and_never_runs(browser: Any, registry: dict[str, Any],
                                                       shots: pathlib.Path) -> None:
    stack = registry["stack"]
    _sign_in(browser, stack, USER, PASSWORD)
    for path in (f"/ui/manifest?name={USER}/xss&ref=v1",
                 f"/ui/manifest?name={USER}/multi&ref={registry['signature']}"):
        browser.get(stack.url + path)
        _wait(browser, lambda d: _all(d, "#manifest-digest"))
        assert browser.execute_script("return window.pwned === undefined")
    assert "<script>window.pwned = 2</script>" in _by(browser, "#annotations").text  # the signature's page
    browser.get(f"{stack.url}/ui/manifest?name={USER}/xss&ref=v1")
    assert "<img src=x" in _by(browser, "#annotations").text
    assert "<script>window.pwned = 1</script>" in _by(browser, "#labels").text
    assert "<script>window.pwned = 1</script>" in _by(browser, "#history").text
    assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    browser.save_screenshot(str(shots / "08-escaped.png"))
    answer = requests.get(f"{stack.url}/ui/manifest?name={USER}/xss&ref=v1",
                          cookies={c["name"]: c["value"] for c in browser.get_cookies()}, timeout=10)
    policy = answer.headers["Content-Security-Policy"]
    for directive in ("script-src 'self'", "object-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert directive in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in answer.text


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another origin whose page posts a delete form to the registry as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        page = (f'<form id="f" method="post" action="{self.target}/ui/delete">'
                f'<input name="name" value="{USER}/multi"><input name="ref" value="v1">'
                '<input name="csrf" value="guessed"></form><script>document.getElementById("f").submit()</script>')
        body = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


def test_a_cross_origin_delete_is_refused_and_deletes_nothing(browser: Any, registry: dict[str, Any],
                                                               shots: pathlib.Path) -> None:
    stack = registry["stack"]
    _sign_in(browser, stack, USER, PASSWORD)
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    form = {"name": f"{USER}/multi", "ref": "v1"}
    # With the session cookie (as if SameSite did not hold) but no CSRF token, or from elsewhere: 403.
    for headers, fields in (({"Origin": stack.url}, form), ({"Origin": "http://evil.example"}, {**form, "csrf": "x"}),
                            ({}, form)):
        answer = requests.post(f"{stack.url}/ui/delete", data=fields, cookies=cookies, headers=headers,
                               allow_redirects=False, timeout=10)
        assert answer.status_code == 403
    # A real cross-origin page in the browser (localhost is another origin than 127.0.0.1).
    _EvilSite.target = stack.url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://localhost:{server.server_address[1]}/")
        _wait(browser, lambda d: d.current_url.startswith(stack.url))
        assert _by(browser, "h1").text == "Not allowed"
        browser.save_screenshot(str(shots / "09-csrf-refused.png"))
    finally:
        server.shutdown()
        server.server_close()
    assert "v1" in registry["pusher"].get("tags/list").json()["tags"]
    assert json.loads(registry["pusher"].get("manifests/v1", registry["image"].media_type).content)


# -- the usage page --------------------------------------------------------------------------

def _usage_json(stack: RunningStack, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(stack.admin(ADMIN, "usage", "--json", *args)))


def _bars(driver: Any, table: str, link: str) -> dict[str, int]:
    """Name -> bytes of each row of a usage chart, with one bar per row."""
    rows = _all(driver, f"{table} tbody tr")
    assert len(_all(driver, f"{table} td.bar-cell svg.size-bar rect")) == len(rows)
    return {row.find_element("css selector", link).text:
            int(row.find_element("css selector", "td.usage-bytes").get_attribute("data-bytes")) for row in rows}


def test_usage_shows_a_user_only_what_they_may_pull_and_an_admin_everything_with_activity(
        browser: Any, registry: dict[str, Any], shots: pathlib.Path) -> None:
    stack = registry["stack"]
    stack.admin(ADMIN, "quota", "set", USER, "50MiB")
    usage = {row["namespace"]: row for row in _usage_json(stack)}
    assert OTHER in usage  # dave's namespace holds something ...
    _sign_in(browser, stack, USER, PASSWORD)
    _by(browser, "#nav-usage").click()
    _wait(browser, lambda d: _all(d, "#usage-title"))
    shown = _bars(browser, "#usage-namespaces", "a.usage-namespace")
    # ... which carol never sees, nor its name anywhere on the page.
    assert sorted(shown) == ["carol", "library"]
    assert OTHER not in browser.page_source
    assert shown[USER] == usage[USER]["bytes"] and shown["library"] == usage["library"]["bytes"]
    assert _all(browser, "#usage-namespaces td.quota-cell svg.quota")  # carol's quota, as a bar
    assert "of 50.0 MiB" in _by(browser, "#usage-namespaces").text
    assert not _all(browser, "#activity") and not _all(browser, "#all-activity")
    browser.save_screenshot(str(shots / "10-usage.png"))

    browser.find_element("link text", USER).click()
    _wait(browser, lambda d: _all(d, "#usage-repositories"))
    [mine] = _usage_json(stack, USER, "--repositories")
    assert _bars(browser, "#usage-repositories", "a.usage-repository") == {
        r["name"]: r["bytes"] for r in mine["repositories"]}
    browser.save_screenshot(str(shots / "11-usage-namespace.png"))
    # Someone else's namespace, and the activity log: refused, naming nothing.
    browser.get(f"{stack.url}/ui/usage?namespace={OTHER}")
    assert _by(browser, "h1").text == "Not found" and "secret" not in browser.page_source
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    assert requests.get(f"{stack.url}/ui/activity", cookies=cookies, timeout=10).status_code == 403

    # A delete through the UI is in the audit log, as the API's would be; an admin sees it, and all.
    Pusher(stack, USER, PASSWORD, f"{USER}/multi").manifest(registry["image"].root, "audited",
                                                            registry["image"].media_type)
    browser.get(f"{stack.url}/ui/delete?name={USER}/multi&ref=audited")
    _by(browser, "#confirm-delete").click()
    _wait(browser, lambda d: _all(d, "#deleted"))
    _sign_in(browser, stack, ADMIN_USER, ADMIN)
    browser.get(f"{stack.url}/ui/usage")
    assert set(_bars(browser, "#usage-namespaces", "a.usage-namespace")) == set(usage)
    assert _all(browser, "#admin-view")

    def untag_shown(driver: Any) -> bool:
        driver.get(f"{stack.url}/ui/usage")
        return any(r.find_element("css selector", ".audit-action").text == "untag"
                   and r.find_element("css selector", ".audit-account").text == USER
                   and r.find_element("css selector", ".audit-repository").text == f"{USER}/multi"
                   and "audited" in r.text and r.find_element("css selector", ".audit-result").text == "ok"
                   for r in _all(driver, "#activity tr.audit-record"))

    _wait(browser, untag_shown, timeout=20)  # audit records are sent in batches, about every second
    browser.save_screenshot(str(shots / "12-usage-admin-activity.png"))
    _by(browser, "#all-activity").click()
    _wait(browser, lambda d: _all(d, "#activity-title"))
    assert _all(browser, "#activity tr.audit-record")
    browser.save_screenshot(str(shots / "13-activity.png"))


# -- without authentication ------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """A second, small stack without authentication (the web UI does not depend on the blob backend)."""
    return start_stack()


def test_without_authentication_every_page_shows_everything(browser: Any, open_stack: RunningStack,
                                                            shots: pathlib.Path) -> None:
    stack = open_stack
    name = f"noauth{os.getpid()}/app"
    pusher = Pusher.__new__(Pusher)
    pusher.base, pusher.headers = f"{stack.url}/v2/{name}", {}
    digest = _image(pusher, "v1", {"kind": "open"}, {})
    browser.delete_all_cookies()
    browser.get(f"{stack.url}/?q=noauth{os.getpid()}")
    _wait(browser, lambda d: _listed(d) == [name])
    assert not _all(browser, "#account") and "no authentication" in _by(browser, "header").text
    browser.save_screenshot(str(shots / "14-noauth-repositories.png"))
    _by(browser, "#repositories a.repository").click()
    _wait(browser, lambda d: _all(d, "#tags"))
    assert [a.text for a in _all(browser, "#tags a.tag")] == ["v1"] and _all(browser, "#tags a.delete")
    browser.get(f"{stack.url}/ui/manifest?name={name}&ref=v1")
    assert _by(browser, "#manifest-digest").text == digest and _all(browser, "#layers")
    browser.get(f"{stack.url}/ui/usage")
    assert _all(browser, "#open-registry") and f"noauth{os.getpid()}" in _bars(
        browser, "#usage-namespaces", "a.usage-namespace")

    def push_shown(driver: Any) -> bool:  # everyone sees the activity: there are no accounts
        driver.get(f"{stack.url}/ui/usage")
        return any(r.find_element("css selector", ".audit-action").text == "push"
                   and r.find_element("css selector", ".audit-repository").text == name
                   for r in _all(driver, "#activity tr.audit-record"))

    _wait(browser, push_shown, timeout=20)
    browser.save_screenshot(str(shots / "15-noauth-usage.png"))
    browser.get(f"{stack.url}/ui/delete?name={name}&ref=v1")
    _by(browser, "#confirm-delete").click()
    _wait(browser, lambda d: _all(d, "#deleted"))
    assert requests.get(f"{stack.url}/v2/{name}/tags/list", timeout=10).json()["tags"] in ([], None)
