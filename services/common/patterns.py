"""Repository-name globs: the one matcher for grants, public repositories and later rules.

A pattern is ``/``-separated components, like a repository name. Each component is either

- ``**`` alone: any number of whole components, crossing ``/``. At the start or in the
  middle it may match none (``**/cache`` matches ``cache``, ``a/**/b`` matches ``a/b``); at
  the end it matches one or more, so ``team/**`` is everything *under* ``team`` and not the
  repository ``team`` itself (git's wildmatch and bmatcuk/doublestar read it the same way);
- a component glob: name characters in which ``*`` stands for any run of characters
  inside that one component; it never crosses ``/``, so ``team/*`` grants ``team/app``
  but not ``team/app/extra``. ``**`` inside a component (``team**``) is refused rather
  than given a guessed meaning.

There is no ``?`` and no ``[...]``: repository names never need them, and each extra
metacharacter is one more way for a grant to mean something its author did not intend.

Why not ``fnmatch``: its ``*`` crosses ``/``. Why not a plain translation to a regular
expression: Python's backtracking makes ``*a*a*a*b`` take seconds on a 255-character name.
Here every choice that a later wildcard can make up for is taken leftmost-first inside an
atomic group (``(?>...)``), so the engine never backtracks into it: a middle piece of a
component, and a run of components between two ``**``. Leftmost is always right there,
because whatever follows begins with a wildcard that can absorb what a later choice would
have left over. Matching is then linear in practice and bounded by name x pattern length.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from services.common.errors import REQUEST_INVALID, RegistryError
from services.common.names import MAX_NAME_LENGTH, is_valid_name

GLOBSTAR = "**"
_CHARACTERS_RE = re.compile(r"[a-z0-9._/*-]+")  # with fullmatch: "$" would let a final "\n" through
# One whole component of the text (the text is the name with a "/" appended).
_ANY_COMPONENT = "[^/]+/"


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid repository pattern, or None when it is."""
    if not pattern:
        return "a repository pattern is required"
    if len(pattern) > MAX_NAME_LENGTH:
        return f"a repository pattern has at most {MAX_NAME_LENGTH} characters"
    if not _CHARACTERS_RE.fullmatch(pattern):
        return "a repository pattern has lowercase letters, digits, '.', '_', '-', '/' and '*' only"
    for component in pattern.split("/"):
        if not component:
            return "a repository pattern has no empty component (leading, trailing or doubled '/')"
        if component == GLOBSTAR:
            continue
        if GLOBSTAR in component:
            return "'**' must be a whole path component, as in team/** or **/cache"
        # An alphanumeric is the best a "*" can stand for (it joins anything), so when this
        # stand-in is not a valid component, no name at all can match: surely a typo.
        if not is_valid_name(component.replace("*", "a")):
            return f"pattern component {component!r} can never match a repository name"
    return None


def is_valid_pattern(pattern: str) -> bool:
    return pattern_problem(pattern) is None


def validate_pattern(pattern: str) -> str:
    """``pattern`` itself, or REQUEST_INVALID saying what is wrong with it."""
    problem = pattern_problem(pattern)
    if problem is not None:
        raise RegistryError(REQUEST_INVALID, f"{problem}: {pattern[:MAX_NAME_LENGTH + 1]!r}")
    return pattern


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern``. An invalid pattern (say, one stored before patterns
    were validated) matches nothing: for grants, denying is the safe reading."""
    compiled = _compiled(pattern)
    return compiled is not None and compiled.fullmatch(name + "/") is not None


def matches_any(patterns: Iterable[str], name: str) -> bool:
    return any(matches(pattern, name) for pattern in patterns)


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    """The pattern as a regular expression over ``name + "/"`` (so every component, the last
    included, ends with "/"), or None when the pattern is invalid. Cached: the same few
    patterns are matched against every name a catalog page lists."""
    if not is_valid_pattern(pattern):
        return None
    # pattern = run_0 ** run_1 ** ... ** run_m, each run a (possibly empty) list of component globs.
    runs: list[list[str]] = [[]]
    for component in pattern.split("/"):
        if component != GLOBSTAR:
            runs[-1].append(component)
        elif runs[-1] or len(runs) == 1:  # "**/**" is one "**"
            runs.append([])
    if len(runs) == 1:
        return re.compile(_run(runs[0]))
    first, *middle, last = runs
    regex = _run(first)  # anchored at the start
    for run in middle:
        # The leftmost place this run fits, committed: the "**" after it absorbs the rest.
        regex += f"(?>(?:{_ANY_COMPONENT})*?{_run(run)})"
    # Anchored at the end; a trailing "**" is one or more components.
    regex += f"(?:{_ANY_COMPONENT})*{_run(last)}" if last else f"(?:{_ANY_COMPONENT})+"
    return re.compile(regex)


def _run(components: list[str]) -> str:
    return "".join(_component(glob) for glob in components)


def _component(glob: str) -> str:
    """One component glob as a regular expression for exactly one non-empty component and its "/"."""
    first, *rest = glob.split("*")
    if not rest:
        return re.escape(glob) + "/"
    *middle, last = rest
    regex = "(?!/)" + re.escape(first)
    for piece in middle:
        # Leftmost occurrence, committed: the "*" after it can absorb anything a later one would skip.
        regex += f"(?>[^/]*?{re.escape(piece)})"
    return regex + f"[^/]*{re.escape(last)}/"
