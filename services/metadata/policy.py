"""The governance rules the metadata service enforces: the policy file's plus the stored ones.

Stored rules live in ``wharf:policy:<kind>`` (HASH rule key -> rule JSON) and every change bumps
``wharf:policy:version`` in the same transaction. A write script that depends on the rules (an
immutable tag, a quota) is given the version its caller read them at and refuses to run when the
version moved (``WHARF_POLICY_STALE``); the caller then reloads and runs again. So a rule added
while a push is in flight either applies to it or the push finished first: never a push judged by
rules that were already replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis

from services.common import governance
from services.common.errors import DENIED, REQUEST_INVALID, UNAVAILABLE, RegistryError
from services.common.governance import KINDS, Policy, PolicyError
from services.common.redisconn import text

VERSION = "wharf:policy:version"
STALE = "WHARF_POLICY_STALE"
# A guard for write scripts: ARGV position given by the caller, "" to skip (no rule involved).
GUARD = f"""
local function policy_current(version)
  if version == '' then return true end
  return (redis.call('GET', '{VERSION}') or '0') == version
end
"""
REFRESH_SECONDS = 1.0
GUARD_ATTEMPTS = 8  # runs of a write script whose rules went stale before the write gives up (503)
T = TypeVar("T")
log = logging.getLogger("wharf.metadata.policy")


def rules_key(kind: str) -> str:
    return f"wharf:policy:{kind}"


class PolicyStore:
    """The effective policy, cached for ``REFRESH_SECONDS`` (one GET of the version then)."""

    def __init__(self, client: aredis.Redis, file_policy: Policy | None = None) -> None:
        self._r = client
        self.file = file_policy or Policy()
        self._stored = Policy()
        self._version = -1
        self._checked = 0.0

    async def current(self, fresh: bool = False) -> tuple[Policy, str]:
        """(effective policy, version as scripts compare it)."""
        now = time.monotonic()
        if fresh or now - self._checked > REFRESH_SECONDS:
            version = int(text(await self._r.get(VERSION)) or 0)
            if version != self._version:
                await self._load(version)
            self._checked = now
        return self.file.then(self._stored), str(self._version)

    async def _load(self, version: int) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.get(VERSION)
            for kind in KINDS:
                pipe.hgetall(rules_key(kind))
            raw_version, *stored = await pipe.execute()
        document: dict[str, list[Any]] = {}
        for (section, kind), entries in zip(governance.SECTIONS.items(), stored, strict=True):
            assert kind in KINDS
            document[section] = [json.loads(text(v)) for _, v in sorted(entries.items())]
        try:
            self._stored = governance.parse_document(document, "stored policy")
        except PolicyError:
            # Stored by a newer release, or edited by hand: keep what parses, rule by rule.
            self._stored = _lenient(document)
        self._version = int(text(raw_version) or version or 0)

    async def guarded(self, run: Callable[[Policy, str], Awaitable[T]]) -> T:
        """Runs ``run(policy, version)``, again with fresh rules when its script found them stale.

        Rules stored in a burst (a script setting hundreds, several at once) move the version
        between a reload and the script often enough that three tries failed a few pushes in a
        hundred; those were refused as DENIED, which clients take as final. So: more tries, a
        short pause between them once the first retry failed, and then a 503 the client retries."""
        policy, version = await self.current()
        for attempt in range(GUARD_ATTEMPTS):
            try:
                return await run(policy, version)
            except StaleRules:
                if attempt == GUARD_ATTEMPTS - 1:
                    break
                if attempt:
                    await asyncio.sleep(min(0.2, 0.005 * 2 ** attempt))
                policy, version = await self.current(fresh=True)
        raise RegistryError(UNAVAILABLE, "the governance rules kept changing while this request ran; retry",
                            detail={"retry_after": 1})

    async def set_rule(self, kind: str, rule_text: str) -> governance.Rule:
        try:
            rule = governance.parse_rule(kind, json.loads(rule_text or "null"))
        except (PolicyError, ValueError) as exc:
            raise RegistryError(REQUEST_INVALID, str(exc)) from None
        if any(existing.key == rule.key for existing in self.file.rules(kind)):
            raise RegistryError(DENIED, f"a {kind} rule for {rule.key} is in the policy file; change it there")
        key = rules_key(kind)
        if not await self._r.hexists(key, rule.key) and await self._r.hlen(key) >= governance.MAX_RULES:
            raise RegistryError(REQUEST_INVALID, f"at most {governance.MAX_RULES} {kind} rules")
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, rule.key, json.dumps(governance.rule_json(rule), sort_keys=True))
            pipe.incr(VERSION)
            await pipe.execute()
        return rule

    async def remove_rule(self, kind: str, rule_key: str) -> None:
        if kind not in KINDS:
            raise RegistryError(REQUEST_INVALID, f"unknown kind {kind[:40]!r}: one of {', '.join(KINDS)}")
        in_file = any(existing.key == rule_key for existing in self.file.rules(kind))
        if in_file and not await self._r.hexists(rules_key(kind), rule_key):
            raise RegistryError(DENIED, f"the {kind} rule {rule_key[:300]} is in the policy file; remove it there")
        # A stored rule the file shadows (one written into the file after it was stored) can go:
        # else it came back the day the file's went.
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hdel(rules_key(kind), rule_key)
            pipe.incr(VERSION)
            removed, _ = await pipe.execute()
        if not removed:
            raise RegistryError(REQUEST_INVALID, f"no stored {kind} rule {rule_key[:300]!r}")


class StaleRules(Exception):
    """A script found the rules changed since its caller read them."""


def raise_if_stale(exc: Exception) -> None:
    if str(exc).startswith(STALE):
        raise StaleRules() from None


def _lenient(document: dict[str, list[Any]]) -> Policy:
    """The stored rules that parse; each other one is left out with a warning (one stored before
    a check that refuses it now, such as a quota past 8 EiB: `wharf-admin <kind> remove` drops it)."""
    found: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for section, kind in governance.SECTIONS.items():
        for entry in document.get(section, []):
            try:
                found[kind].append(governance.parse_rule(kind, entry))
            except PolicyError as exc:
                log.warning("a stored governance rule is ignored: %s", str(exc)[:300])
                continue
    return Policy(tuple(found["immutable"]), tuple(found["quota"]), tuple(found["retention"]),
                  tuple(found["ratelimit"]))
