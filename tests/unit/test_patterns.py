"""Repository-name globs: '*' stays inside one component, '**' crosses '/', nothing else is special."""

from __future__ import annotations

import fnmatch
import random
import time

import pytest

from services.common import patterns
from services.common.errors import RegistryError


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("team/app", "team/app", True),
    ("team/app", "team/app2", False),
    ("team/*", "team/app", True),
    ("team/*", "team/a/b", False),  # fnmatch said yes: a robot granted team/* could push to team/a/b
    ("team/*", "team", False),
    ("team/*", "teams/app", False),
    ("*", "app", True),
    ("*", "team/app", False),
    ("team/app-*", "team/app-web", True),
    ("team/app-*", "team/app-web/x", False),
    ("team/*-web", "team/app-web", True),
    ("team/*/web", "team/app/web", True),
    ("team/*/web", "team/a/b/web", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "axbybzc", True),
    ("a*b*c", "acb", False),
    ("a*b*b", "ab", False),
    ("team/**", "team/a", True),
    ("team/**", "team/a/b/c", True),
    ("team/**", "team", False),  # everything under team, not team itself
    ("**/cache", "cache", True),
    ("**/cache", "a/b/cache", True),
    ("**/cache", "a/b/cache2", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/x/y/c", False),
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("**/a/**", "x/a/y", True),
    ("**/a/**", "x/a", False),
    ("**/**/b", "b", True),
    ("a/**/**", "a", False),
    ("a/**/**", "a/b", True),
    ("*/**/*-cache", "org/x/y/build-cache", True),
])
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert patterns.matches(pattern, name) is expected


@pytest.mark.parametrize("name", ["", "/", "a/", "/a", "a//b"])
def test_malformed_names_match_no_wildcard(name: str) -> None:
    for pattern in ["*", "*/*", "**", "a/**", "**/*"]:
        assert not patterns.matches(pattern, name), (pattern, name)


@pytest.mark.parametrize(("pattern", "problem"), [
    ("", "required"),
    ("a" * 256, "at most 255"),
    ("Team/*", "lowercase"),
    ("team/[ab]", "lowercase"),
    ("team/a?", "lowercase"),
    ("team/a;b", "lowercase"),
    ("team/*\n", "lowercase"),
    ("team/../a", "never match"),
    ("/team", "empty component"),
    ("team/", "empty component"),
    ("team//a", "empty component"),
    ("team**", "whole path component"),
    ("team/***", "whole path component"),
    ("team/-*", "never match"),
    ("team/*.", "never match"),
])
def test_invalid_patterns_are_refused_with_a_reason(pattern: str, problem: str) -> None:
    assert problem in (patterns.pattern_problem(pattern) or "")
    with pytest.raises(RegistryError) as raised:
        patterns.validate_pattern(pattern)
    assert raised.value.code == "REQUEST_INVALID"


@pytest.mark.parametrize("pattern", ["team/app", "team/*", "team/**", "**", "*", "**/cache", "a/**/b",
                                     "team/app-*", "team/*_x", "a.b/c__d/e--f", "*" + "/*" * 100])
def test_valid_patterns(pattern: str) -> None:
    assert patterns.validate_pattern(pattern) == pattern


def test_an_invalid_stored_pattern_matches_nothing() -> None:
    """Patterns stored before validation existed (fnmatch syntax) must not grant anything."""
    for pattern in ["team/[ab]", "team/a?", "team**", "", "team/"]:
        assert not patterns.matches(pattern, "team/a")
    assert not patterns.matches_any(["team/[ab]", "other/*"], "team/a")
    assert patterns.matches_any(["team/[ab]", "team/*"], "team/a")


def _reference(pattern: str, name: str) -> bool:
    """The semantics written out directly (slow, obviously right): '**' is zero or more whole
    components, one or more at the end; other components match one name component with
    fnmatch, which is exact here because a component holds no '/', '?' or '['."""
    globs, parts = pattern.split("/"), name.split("/")

    def match(g: int, p: int) -> bool:
        if g == len(globs):
            return p == len(parts)
        if globs[g] == "**":
            if g == len(globs) - 1:
                return len(parts) - p >= 1
            return any(match(g + 1, k) for k in range(p, len(parts) + 1))
        return p < len(parts) and fnmatch.fnmatchcase(parts[p], globs[g]) and match(g + 1, p + 1)

    return match(0, 0)


def test_agrees_with_the_reference_semantics_on_random_cases() -> None:
    rng = random.Random(20261129)
    globs = ["a", "b", "ab", "*", "a*", "*b", "a*b", "*a*", "b*a*b", "**"]
    components = ["a", "b", "ab", "ba", "aab", "bab", "abab", "b-a"]
    checked = 0
    for _ in range(6000):
        pattern = "/".join(rng.choice(globs) for _ in range(rng.randint(1, 5)))
        name = "/".join(rng.choice(components) for _ in range(rng.randint(1, 6)))
        assert patterns.matches(pattern, name) is _reference(pattern, name), (pattern, name)
        checked += 1
    assert checked == 6000


@pytest.mark.parametrize("pattern", [
    "*a*a*a*a*a*a*a*a*b",
    "a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
    "**/a/**/a/**/a/**/a/**/a/**/b",
    "**/*a*/**/*a*/**/*a*/**/b/**",
])
def test_adversarial_patterns_stay_fast(pattern: str) -> None:
    """A backtracking translation took seconds on *a*a*a*b; every choice here is committed."""
    assert patterns.is_valid_pattern(pattern)
    for name in ["a" * 255, "/".join(["a"] * 128)]:
        started = time.perf_counter()
        assert not patterns.matches(pattern, name)
        assert time.perf_counter() - started < 0.05, (pattern, name[:20])
