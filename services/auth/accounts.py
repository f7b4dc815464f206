"""Accounts, grants, public repositories, refresh tokens and login throttling in Redis."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

import bcrypt
import redis

from services.auth import peers
from services.auth import redis_keys as keys
from services.auth.policy import Principal, normalise_actions
from services.auth.throttle import Bucket, LoginThrottle
from services.common import patterns
from services.common.errors import (
    ACCOUNT_EXISTS,
    ACCOUNT_UNKNOWN,
    REQUEST_INVALID,
    UNAUTHORIZED,
    RegistryError,
)
from services.common.names import MAX_NAME_LENGTH
from services.common.redisconn import text

KINDS = ("user", "robot")
MIN_PASSWORD = 8
# bcrypt looks at 72 bytes at most; longer passwords are refused rather than silently cut.
MAX_PASSWORD = 72
REFRESH_REFUSED = "refresh token is invalid, expired or revoked"
# Refresh tokens one account holds at most. Every `docker login` asks for one (a CI robot gets one
# per job), each lives WHARF_REFRESH_TOKEN_TTL, and the account's set of token ids was never
# trimmed, ended ones included: 2,000 logins of one user in 16 s grew Redis by 1.3 MB, without
# bound. Past the cap the set is trimmed to REFRESH_TRIM_TO: ended ids first, then the tokens that
# end soonest (the oldest), so the trimming's cost is paid once per few thousand logins.
MAX_REFRESH_TOKENS = 10_000
REFRESH_TRIM_TO = 9_000
# KEYS: the account, the hash to write; ARGV: field, value. Writes only while the account exists (its
# "kind"), in one step: a grant or a password set that read the account just before a delete no longer
# writes after it (a grant left so was inherited by the next account of that name, and a password hash
# made the name one that could be neither created nor deleted).
_SET_IF_ACCOUNT = """
if not redis.call('HGET', KEYS[1], 'kind') then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


def validate_account_name(name: str) -> str:
    if not (1 <= len(name) <= 64) or not keys.ACCOUNT_RE.match(name):
        raise RegistryError(REQUEST_INVALID, f"invalid account name {name[:80]!r}: lowercase letters, digits, "
                                             "'.', '_' and '-'")
    return name


def _check_password(password: str) -> bytes:
    raw = password.encode()
    if not MIN_PASSWORD <= len(raw) <= MAX_PASSWORD:
        raise RegistryError(REQUEST_INVALID, f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} bytes")
    return raw


class AccountStore:
    def __init__(self, client: redis.Redis, bcrypt_rounds: int, failure_limit: int, failure_window: int) -> None:
        self._r = client
        self._rounds = bcrypt_rounds
        self._failure_limit = failure_limit
        self._throttle = LoginThrottle(client, failure_window)
        self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(bcrypt_rounds))
        self._set_if_account = client.register_script(_SET_IF_ACCOUNT)

    def _set_while_exists(self, name: str, key: str, field: str, value: str | bytes) -> None:
        if not self._set_if_account(keys=[keys.account(name), key], args=[field, value]):
            raise RegistryError(ACCOUNT_UNKNOWN, f"account {name} does not exist")

    @property
    def client(self) -> redis.Redis:
        """The auth keyspace's Redis client (identity backends share it)."""
        return self._r

    # -- accounts ----------------------------------------------------------

    def create(self, name: str, password: str, kind: str = "user", admin: bool = False) -> Principal:
        validate_account_name(name)
        if kind not in KINDS:
            raise RegistryError(REQUEST_INVALID, f"kind must be one of {KINDS}")
        hashed = bcrypt.hashpw(_check_password(password), bcrypt.gensalt(self._rounds))
        fields: dict[str | bytes, bytes | float | int | str]
        fields = {"kind": kind, "admin": int(admin), "hash": hashed, "created_at": int(time.time())}
        # HSETNX on the hash field makes creation race-free; the rest follows in one transaction.
        if not self._r.hsetnx(keys.account(name), "hash", hashed):
            raise RegistryError(ACCOUNT_EXISTS, f"account {name} already exists")
        # Nothing of an earlier account of this name carries over: grants or refresh tokens written
        # by calls that raced its delete (or by versions before the writes checked the account).
        self.revoke_refresh_tokens(name)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.grants(name))
            pipe.hset(keys.account(name), mapping=fields)
            pipe.zadd(keys.ACCOUNTS, {name: 0})
            pipe.execute()
        return self.get(name)

    def exists(self, name: str) -> bool:
        return bool(self._r.exists(keys.account(validate_account_name(name))))

    def get(self, name: str) -> Principal:
        validate_account_name(name)
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.account(name), "kind", "admin")
            pipe.hgetall(keys.grants(name))
            (kind, admin), grants = pipe.execute()
        if kind is None:
            raise RegistryError(ACCOUNT_UNKNOWN, f"account {name} does not exist")
        parsed = tuple(sorted((text(p), frozenset(text(a).split(",")) - {""}) for p, a in grants.items()))
        return Principal(name, text(kind), text(admin) == "1", parsed)

    def find(self, name: str) -> Principal | None:
        """The account, or None when there is none of that name (or the name is invalid): for
        callers that hold a name from a token, whose account may have been deleted since."""
        try:
            return self.get(name)
        except RegistryError as err:
            if err.error in (ACCOUNT_UNKNOWN, REQUEST_INVALID):
                return None
            raise

    def set_password(self, name: str, password: str) -> Principal:
        principal = self.get(name)
        hashed = bcrypt.hashpw(_check_password(password), bcrypt.gensalt(self._rounds))
        self._set_while_exists(name, keys.account(name), "hash", hashed)
        self.revoke_refresh_tokens(name)
        return principal

    def delete(self, name: str) -> None:
        self.get(name)
        self.revoke_refresh_tokens(name)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.account(name), keys.grants(name))
            pipe.zrem(keys.ACCOUNTS, name)
            pipe.execute()

    def all(self) -> list[Principal]:
        return [self.get(text(n)) for n in self._r.zrange(keys.ACCOUNTS, 0, -1)]

    def grant(self, name: str, pattern: str, actions: list[str]) -> Principal:
        self.get(name)
        try:
            wanted = normalise_actions(actions)
        except ValueError as exc:
            raise RegistryError(REQUEST_INVALID, str(exc)) from None
        patterns.validate_pattern(pattern)
        self._set_while_exists(name, keys.grants(name), pattern, ",".join(sorted(wanted)))
        return self.get(name)

    def revoke(self, name: str, pattern: str) -> Principal:
        """Removes a grant; any stored pattern, so one saved before patterns were validated can go too."""
        self.get(name)
        self._r.hdel(keys.grants(name), pattern)
        return self.get(name)

    # -- public repositories ----------------------------------------------

    def set_public(self, pattern: str, public: bool) -> None:
        """Making public takes a valid pattern only; making private takes any stored pattern, so
        one saved before patterns were validated can be removed."""
        if public:
            self._r.sadd(keys.PUBLIC, patterns.validate_pattern(pattern))
        elif not pattern or len(pattern) > MAX_NAME_LENGTH:
            raise RegistryError(REQUEST_INVALID, "a repository name or pattern is required")
        else:
            self._r.srem(keys.PUBLIC, pattern)

    def public_patterns(self) -> list[str]:
        return sorted(text(p) for p in self._r.smembers(keys.PUBLIC))

    # -- passwords ---------------------------------------------------------

    def throttled(self, name: str, address: str, verify: Callable[[], bool], *,
                  account_limit: int | None = None) -> bool:
        """Runs ``verify`` (a password check, by whichever identity backend) under the login
        throttle and returns its answer; UNAUTHORIZED for a name no account can have,
        TOOMANYREQUESTS while locked.

        Failures are counted per account and client address (IPv6 per /64); with
        ``account_limit`` also per account from all addresses together (the admin API,
        where rotating addresses must not buy unlimited guesses). The check-and-count is
        atomic (:mod:`services.auth.throttle`), so concurrent guesses cannot overrun a limit.
        """
        return self._throttle.check(self._buckets(name, address, account_limit), verify)

    def admit_verified(self, name: str, address: str, account_limit: int | None = None) -> None:
        """A right password known without a check: TOOMANYREQUESTS while failed logins lock
        ``name`` from ``address`` (as ``throttled`` counts them), else their failures cleared."""
        self._throttle.admit_verified(self._buckets(name, address, account_limit))

    def _buckets(self, name: str, address: str, account_limit: int | None) -> list[Bucket]:
        if not keys.ACCOUNT_RE.match(name or "") or len(name) > 64:
            raise RegistryError(UNAUTHORIZED, "invalid username or password")
        bucket = peers.throttle_bucket(address)
        buckets = [Bucket(keys.failures(name, bucket), keys.checking(name, bucket), self._failure_limit)]
        if account_limit is not None:
            buckets.append(Bucket(keys.failures(name, keys.ANY_ADDRESS), keys.checking(name, keys.ANY_ADDRESS),
                                  account_limit))
        return buckets

    def password_stamp(self, name: str) -> str | None:
        """The account's stored password hash (what a remembered login is checked against,
        services/auth/verified.py); None when there is no such account."""
        stored = self._stored_hash(name)
        return text(stored) if stored is not None else None

    def _stored_hash(self, name: str) -> bytes | None:
        return self._r.hget(keys.account(name), "hash") if keys.ACCOUNT_RE.match(name or "") else None

    def check_password(self, name: str, password: str) -> bool | None:
        """True when ``password`` is the account's, False when it is not, None when there is no
        such account (checked against a dummy hash then, so a miss costs as much as a hit)."""
        raw = password.encode()
        if len(raw) > MAX_PASSWORD:
            raw = b""  # never matches: stored passwords are at most MAX_PASSWORD bytes
        stored = self._stored_hash(name)
        matches = bcrypt.checkpw(raw, stored or self._dummy_hash)
        return None if stored is None else matches

    # -- refresh tokens ----------------------------------------------------

    def new_refresh_token(self, name: str, lifetime: int, backend: str = "", bound: str = "") -> str:
        """A refresh token for ``name``; ``backend`` names the identity backend that vouched for
        it when that is not the built-in accounts (its redemption asks that backend again);
        ``bound``, the digest of the credential stamp the login checked (redemption refuses the
        token once the stamp is another: services/auth/identity.py, ``Identities.redeem``)."""
        token = secrets.token_urlsafe(32)
        token_id = hashlib.sha256(token.encode()).hexdigest()
        fields: dict[str | bytes, bytes | float | int | str] = {"account": name, "backend": backend,
                                                                "expires_at": int(time.time()) + lifetime}
        if bound:
            fields["stamp"] = bound
        with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.refresh(token_id), mapping=fields)
            pipe.expire(keys.refresh(token_id), lifetime)
            pipe.sadd(keys.refresh_of(name), token_id)
            pipe.scard(keys.refresh_of(name))
            held = pipe.execute()[-1]
        if held > MAX_REFRESH_TOKENS:
            self._trim_refresh_tokens(name, keep=REFRESH_TRIM_TO)
        return token

    def _trim_refresh_tokens(self, name: str, keep: int) -> None:
        """Leaves ``name`` at most ``keep`` refresh tokens: forgets the ids of ended ones, then ends
        the oldest. A token issued meanwhile is not among the ids read, so it stays."""
        ids = [text(i) for i in self._r.smembers(keys.refresh_of(name))]
        with self._r.pipeline(transaction=False) as pipe:
            for token_id in ids:
                pipe.hget(keys.refresh(token_id), "expires_at")
            ends = pipe.execute()
        live = sorted((int(end), token_id) for token_id, end in zip(ids, ends, strict=True) if end is not None)
        oldest = [token_id for _, token_id in live[:max(0, len(live) - keep)]]
        ended = [token_id for token_id, end in zip(ids, ends, strict=True) if end is None]
        if not oldest and not ended:
            return
        with self._r.pipeline(transaction=True) as pipe:
            for token_id in oldest:
                pipe.delete(keys.refresh(token_id))
            pipe.srem(keys.refresh_of(name), *oldest, *ended)
            pipe.execute()

    def redeem_refresh_token(self, token: str) -> tuple[str, str, str]:
        """(account, backend, bound stamp digest) of a valid refresh token (backend "" for the
        built-in accounts; the digest "" when the token is bound to none); UNAUTHORIZED otherwise."""
        token_id = hashlib.sha256(token.encode()).hexdigest()
        account, backend, bound = self._r.hmget(keys.refresh(token_id), "account", "backend", "stamp")
        if account is None:
            raise RegistryError(UNAUTHORIZED, REFRESH_REFUSED)
        return text(account), text(backend), text(bound)

    def revoke_refresh_token(self, token: str) -> int:
        """Ends one refresh token (1; 0 when it was not valid): the web UI's sign-out."""
        token_id = hashlib.sha256(token.encode()).hexdigest()
        account = self._r.hget(keys.refresh(token_id), "account")
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.refresh(token_id))
            if account is not None:
                pipe.srem(keys.refresh_of(text(account)), token_id)
            deleted = pipe.execute()[0]
        return int(deleted)

    def revoke_refresh_tokens(self, name: str) -> int:
        ids = [text(i) for i in self._r.smembers(keys.refresh_of(name))]
        with self._r.pipeline(transaction=True) as pipe:
            for token_id in ids:
                pipe.delete(keys.refresh(token_id))
            pipe.delete(keys.refresh_of(name))
            pipe.execute()
        return len(ids)
