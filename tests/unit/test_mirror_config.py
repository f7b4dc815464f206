"""The mirrored upstreams: one YAML section, checked at start-up with one line per problem naming
the file and the line; a password is read from its file and never shown."""

from __future__ import annotations

import pathlib
import re

import pytest

from services.common.config_file import ConfigFileError
from services.mirror.config import Mirrors, MirrorsError, Upstream, load, parse_duration, parse_size, problems

EXAMPLE = """\
upstreams:
  - prefix: docker.io
    url: https://registry-1.docker.io
    default: true
    anonymous: true
    tag_ttl: 1h
    size_limit: 50GiB
  - prefix: ghcr.io
    url: https://GHCR.io/
    username: robot
    password_file: ghcr-password
  - prefix: registry.k8s.io/pause
    url: http://localhost:5001
    insecure: true
    tag_ttl: 0
    size_limit: 1024
"""


def _write(tmp_path: pathlib.Path, text: str, name: str = "mirrors.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _mirrors_file(tmp_path: pathlib.Path, text: str) -> dict[str, str]:
    (tmp_path / "ghcr-password").write_text("s3cr3t-value\n")
    return {"WHARF_MIRRORS_FILE": _write(tmp_path, text)}


def test_a_valid_file_gives_typed_upstreams(tmp_path: pathlib.Path) -> None:
    mirrors = load(_mirrors_file(tmp_path, EXAMPLE))
    hub, ghcr, pause = mirrors.upstreams
    assert mirrors.enabled and mirrors.default_upstream is hub
    assert hub == Upstream(prefix="docker.io", url="https://registry-1.docker.io", default=True, anonymous=True,
                           tag_ttl=3600.0, size_limit=50 * 1024 ** 3)
    # The URL is normalised; the relative password file is read from the YAML file's folder, minus
    # one trailing newline.
    assert (ghcr.url, ghcr.username, ghcr.password, ghcr.tag_ttl) == ("https://ghcr.io", "robot", "s3cr3t-value", 300.0)
    assert (ghcr.insecure, ghcr.default, ghcr.anonymous, ghcr.size_limit) == (False, False, False, None)
    assert (pause.url, pause.insecure, pause.tag_ttl, pause.size_limit) == ("http://localhost:5001", True, 0.0, 1024)


def test_the_section_may_be_in_wharf_config_and_its_own_file_wins(tmp_path: pathlib.Path) -> None:
    config = _write(tmp_path, "port: 5000\nmirrors:\n  upstreams:\n    - {prefix: quay.io, url: https://quay.io}\n",
                    "wharf.yaml")
    assert [u.prefix for u in load({"WHARF_CONFIG": config}).upstreams] == ["quay.io"]
    own = _write(tmp_path, "upstreams:\n  - {prefix: ghcr.io, url: https://ghcr.io}\n")
    assert [u.prefix for u in load({"WHARF_CONFIG": config, "WHARF_MIRRORS_FILE": own}).upstreams] == ["ghcr.io"]


@pytest.mark.parametrize("text", ["", "upstreams: []\n", "upstreams:\n", "port: 5000\n"])
def test_nothing_configured_is_no_mirrors(tmp_path: pathlib.Path, text: str) -> None:
    assert load({}) == Mirrors()
    assert not load({"WHARF_CONFIG": _write(tmp_path, text, "wharf.yaml")}).enabled
    assert not load({"WHARF_CONFIG": _write(tmp_path, "mirrors:\n", "wharf.yaml")}).enabled
    if text != "port: 5000\n":
        assert load({"WHARF_MIRRORS_FILE": _write(tmp_path, text)}) == Mirrors()


GOOD = "  - prefix: docker.io\n    url: https://registry-1.docker.io\n"


@pytest.mark.parametrize(("text", "message"), [
    ("upstreams:\n" + GOOD + "    tag_ttl: 5 minutes\n",
     "line 4: upstreams[0].tag_ttl: '5 minutes' is not a duration like 30s, 5m, 1h"),
    ("upstreams:\n" + GOOD + "    tag_ttl: 30\n", "line 4: upstreams[0].tag_ttl: 30 is not a duration"),
    ("upstreams:\n" + GOOD + "    tag_ttl: -5m\n", "line 4: upstreams[0].tag_ttl: '-5m' is not a duration"),
    ("upstreams:\n" + GOOD + "  - prefix: ghcr.io\n    url: https://ghcr.io\n    size_limit: lots\n",
     "line 6: upstreams[1].size_limit: 'lots' is not a size like 50GiB, 500MB or a number of bytes"),
    ("upstreams:\n" + GOOD + "    size_limit: 0\n", "line 4: upstreams[0].size_limit: 0 is not a size"),
    ("upstreams:\n" + GOOD + "    colour: blue\n", "line 4: upstreams[0]: colour is not a key here (expected one"),
    ("upstreams:\n" + GOOD + "    tag_ttl: 5m\n    tag_ttl: 1h\n", "line 5: upstreams[0]: tag_ttl is given twice"),
    ("upstreams:\n" + GOOD + "    insecure: maybe\n", "line 4: upstreams[0].insecure: 'maybe' is not true or false"),
    ("upstreams:\n" + GOOD + "    username:\n", "line 4: upstreams[0].username: has no value"),
    ("upstreams:\n" + GOOD + "    username: robot\n",
     "line 2: upstreams[0]: username and password_file go together: give both or neither"),
    ("upstreams:\n  - prefix: docker.io\n", "line 2: upstreams[0]: url is missing"),
    ("upstreams:\n  - url: https://quay.io\n", "line 2: upstreams[0]: prefix is missing"),
    ("upstreams:\n  - prefix: Docker.io\n    url: https://x\n",
     "line 2: upstreams[0].prefix: 'Docker.io' is not a repository-name prefix"),
    ("upstreams:\n  - prefix: /quay.io\n    url: https://x\n", "line 2: upstreams[0].prefix: '/quay.io' is not"),
    ("upstreams:\n  - prefix: 1.5\n    url: https://x\n", "line 2: upstreams[0].prefix: expected text, not 1.5"),
    ("upstreams:\n  - prefix: quay.io\n    url: http://quay.io\n",
     "line 3: upstreams[0].url: plain http needs insecure: true"),
    ("upstreams:\n  - prefix: quay.io\n    url: ftp://quay.io\n",
     "line 3: upstreams[0].url: 'ftp://quay.io' is not a URL like https://registry-1.docker.io"),
    ("upstreams:\n  - prefix: quay.io\n    url: https://quay.io:99999\n",
     "line 3: upstreams[0].url: 'https://quay.io:99999' is not a URL"),
    ("upstreams:\n  - prefix: quay.io\n    url: https://[::1\n",
     "line 3: upstreams[0].url: 'https://[::1' is not a URL"),
    ("upstreams:\n  - prefix: quay.io\n    url: https://quay.io/v2\n",
     "line 3: upstreams[0].url: 'https://quay.io/v2' must be scheme://host[:port] only"),
    ("upstreams:\n  - prefix: quay.io\n    url: https://quay.io?a=b\n", "must be scheme://host[:port] only"),
    ("upstreams:\n  - prefix: quay.io\n    url: https://quay.io#top\n", "must be scheme://host[:port] only"),
    ("upstreams:\n" + GOOD + "  - prefix: docker.io\n    url: https://mirror.gcr.io\n",
     "line 4: upstreams[1].prefix: 'docker.io' is also upstreams[0]'s prefix 'docker.io'"),
    ("upstreams:\n" + GOOD + "  - prefix: docker.io/library\n    url: https://mirror.gcr.io\n",
     "line 4: upstreams[1].prefix: 'docker.io/library' overlaps upstreams[0]'s prefix 'docker.io'"),
    ("upstreams:\n" + GOOD + "    default: true\n  - {prefix: quay.io, url: https://quay.io, default: true}\n",
     "line 5: upstreams[1].default: upstreams[0] is the default"),
    ("upstreams:\n  - prefix: quay.io\n    url: https://quay .io\n",
     "line 3: upstreams[0].url: 'https://quay .io' is not a URL"),
    ("upstreams:\n" + GOOD + "    username: !!python/name:os.system\n",
     "line 4: upstreams[0].username: tag:yaml.org,2002:python/name:os.system is not a plain YAML value"),
    ("upstreams:\n  - docker.io\n", "line 2: upstreams[0]: expected a mapping of keys to values"),
    ("upstreams: docker.io\n", "line 1: upstreams: expected a list of upstreams"),
    ("\n\nupstream: []\n", "line 3: upstream is not a key here (expected upstreams)"),
    ("- prefix: quay.io\n", "line 1: expected a mapping of keys to values"),
])
def test_each_mistake_is_one_line_naming_the_file_and_the_line(tmp_path: pathlib.Path, text: str, message: str) -> None:
    env = {"WHARF_MIRRORS_FILE": _write(tmp_path, text)}
    with pytest.raises(MirrorsError) as caught:
        load(env)
    assert str(caught.value).startswith(f"WHARF_MIRRORS_FILE={env['WHARF_MIRRORS_FILE']!r} line ")
    assert message in str(caught.value)
    assert message in "\n".join(problems(env))


def test_a_mistake_in_wharf_config_names_that_file_and_the_section(tmp_path: pathlib.Path) -> None:
    config = _write(tmp_path, "port: 5000\nmirrors:\n  upstreams:\n    - prefix: quay.io\n      url: https://quay.io\n"
                              "      tag_ttl: soon\n", "wharf.yaml")
    assert problems({"WHARF_CONFIG": config}) == [
        f"WHARF_CONFIG={config!r} line 6: mirrors.upstreams[0].tag_ttl: 'soon' is not a duration like 30s, 5m, 1h"]


def test_every_problem_is_reported_and_it_is_a_config_file_error(tmp_path: pathlib.Path) -> None:
    env = {"WHARF_MIRRORS_FILE": _write(tmp_path, "upstreams:\n  - prefix: quay.io\n    url: https://quay.io\n"
                                                  "    tag_ttl: soon\n    size_limit: big\n  - prefix: Q\n")}
    assert [line.split(": ", 1)[0].rsplit(" ", 1)[1] for line in problems(env)] == ["4", "5", "6", "6"]
    with pytest.raises(ConfigFileError):
        load(env)
    assert problems(_mirrors_file(tmp_path, EXAMPLE)) == []


def test_an_unreadable_or_broken_file_names_it(tmp_path: pathlib.Path) -> None:
    assert problems({"WHARF_MIRRORS_FILE": "/nonexistent/m.yaml"}) == [
        "WHARF_MIRRORS_FILE='/nonexistent/m.yaml': cannot read it (No such file or directory)"]
    broken = _write(tmp_path, "upstreams:\n  - [\n")
    assert re.fullmatch(r"WHARF_MIRRORS_FILE='.*': not valid YAML at line 3",
                        problems({"WHARF_MIRRORS_FILE": broken})[0])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert problems({"WHARF_MIRRORS_FILE": str(binary)})[0].endswith("cannot read it (not UTF-8 text)")


def test_an_unreadable_or_empty_password_file_is_named_and_the_password_never_shown(tmp_path: pathlib.Path) -> None:
    entry = "upstreams:\n  - prefix: ghcr.io\n    url: https://ghcr.io\n    username: robot\n    password_file: {}\n"
    missing = str(tmp_path / "absent")
    assert problems({"WHARF_MIRRORS_FILE": _write(tmp_path, entry.format(missing))}) == [
        f"WHARF_MIRRORS_FILE={str(tmp_path / 'mirrors.yaml')!r} line 5: upstreams[0].password_file: "
        f"cannot read {missing!r} (No such file or directory)"]
    (tmp_path / "empty").write_text("\n")
    empty = problems({"WHARF_MIRRORS_FILE": _write(tmp_path, entry.format("empty"))})
    assert empty[0].endswith(f"line 5: upstreams[0].password_file: {str(tmp_path / 'empty')!r} is empty")
    (tmp_path / "crlf").write_text("hunter2\r\n")
    assert load({"WHARF_MIRRORS_FILE": _write(tmp_path, entry.format("crlf"))}).upstreams[0].password == "hunter2"


def test_the_password_is_never_in_a_message_or_a_repr(tmp_path: pathlib.Path) -> None:
    env = _mirrors_file(tmp_path, EXAMPLE)
    mirrors = load(env)
    assert "s3cr3t-value" not in repr(mirrors) and "s3cr3t-value" not in str(mirrors.upstreams[1])
    broken = EXAMPLE.replace("password_file: ghcr-password", "password_file: ghcr-password\n    tag_ttl: never")
    env = _mirrors_file(tmp_path, broken)
    assert problems(env) and all("s3cr3t" not in line for line in problems(env))
    # A password in the URL is refused without repeating the URL.
    env = _mirrors_file(tmp_path, "upstreams:\n  - prefix: quay.io\n    url: https://robot:hunter2@quay.io\n")
    assert problems(env) == [f"WHARF_MIRRORS_FILE={env['WHARF_MIRRORS_FILE']!r} line 3: upstreams[0].url: "
                             "must not hold a user name or password (username and password_file are for that)"]


def test_route_by_prefix_and_by_default() -> None:
    hub = Upstream(prefix="docker.io", url="https://registry-1.docker.io", default=True)
    ghcr = Upstream(prefix="ghcr.io", url="https://ghcr.io")
    k8s = Upstream(prefix="registry.k8s.io/sig", url="https://registry.k8s.io")
    mirrors = Mirrors((hub, ghcr, k8s))
    assert mirrors.route("docker.io/library/alpine") == (hub, "library/alpine")
    assert mirrors.route("docker.io/alpine") == (hub, "library/alpine")  # Docker Hub's official images
    assert mirrors.route("ghcr.io/alpine") == (ghcr, "alpine")
    assert mirrors.route("ghcr.io/owner/app/sub") == (ghcr, "owner/app/sub")
    assert mirrors.route("registry.k8s.io/sig/pause") == (k8s, "pause")
    for local in ("registry.k8s.io/pause", "docker.iox/alpine", "docker.io", "alice/app", "alpine"):
        assert mirrors.route(local) is None and not mirrors.is_mirrored(local)
    assert mirrors.is_mirrored("ghcr.io/a/b")
    assert mirrors.route_default("alpine") == (hub, "library/alpine")
    assert mirrors.route_default("bitnami/redis") == (hub, "bitnami/redis")
    assert Mirrors((ghcr,)).route_default("alpine") is None
    assert Mirrors((Upstream(prefix="q", url="https://quay.io", default=True),)).route_default("alpine")[1] == "alpine"
    assert Upstream(prefix="d", url="https://index.docker.io").remote_name("alpine") == "library/alpine"
    assert not Mirrors().enabled and Mirrors().route_default("alpine") is None


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("1.5h", 5400),
                                               ("0", 0), (" 2m ", 120), ("0s", 0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 minutes", "5M", "1w", "-1s", "s", "1h30m"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [("1024", 1024), ("500MB", 500_000_000), ("50GiB", 50 * 2 ** 30),
                                            ("1.5KiB", 1536), ("2 tb", 2 * 10 ** 12), ("10B", 10), ("1mib", 2 ** 20)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "5 GiBs", "-1MB", "1e3", "10 bytes", "\u0663MB", "5  MB"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
