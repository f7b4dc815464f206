"""gRPC face of the auth service."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
import redis

from services.auth import identity, peers, tokens
from services.auth.accounts import AccountStore
from services.auth.audit import AuditTrail, LoggedAudit, audit_for
from services.auth.fair import FairPool
from services.auth.identity import Identities, IdentityContext
from services.auth.policy import (
    ANONYMOUS,
    MirrorPulls,
    Principal,
    grant,
    mirror_pulls,
    refused,
    repository_actions,
)
from services.auth.settings import AuthSettings
from services.auth.signing import ALGORITHM, KeyRing
from services.common import config_file, grpcserver, metrics, plugins, redis_refusals, redisconn, scopes
from services.common.errors import DENIED, TOOMANYREQUESTS, UNAUTHORIZED, UNAVAILABLE, RegistryError
from services.common.grpcserver import threaded
from services.common.internal_auth import read_token
from services.gen.wharf.auth.v1 import auth_pb2 as pb
from services.gen.wharf.auth.v1 import auth_pb2_grpc as pb_grpc
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.mirror.config import Mirrors

log = logging.getLogger("wharf.auth")
_MAX_SCOPES = 32
_MAX_FILTER = 10000
# The admin API also counts an account's failures from every address together, so an
# attacker who can vary addresses (any IPv6 host) gets this many guesses, not unlimited; a
# multiple of the per-address limit, so a stranger's few failures do not lock the operator out.
ADMIN_ACCOUNT_FAILURE_FACTOR = 4
T = TypeVar("T")


def _account_pb(principal: Principal, created_at: int = 0) -> pb.Account:
    return pb.Account(name=principal.name, kind=principal.kind, admin=principal.admin, created_at=created_at,
                      grants=[pb.Grant(pattern=p, actions=sorted(a)) for p, a in principal.grants])


# wharf_auth_token_refusals_total's reasons: a bounded set (anything else is "invalid").
_REFUSAL_REASONS = {UNAUTHORIZED.code: "credentials", TOOMANYREQUESTS.code: "throttled", DENIED.code: "denied",
                    UNAVAILABLE.code: "unavailable"}


class AuthServicer(pb_grpc.AuthServicer):
    def __init__(self, settings: AuthSettings, store: AccountStore, keyring: KeyRing,
                 mirrored: MirrorPulls = (), identities: Identities | None = None,
                 audit: AuditTrail | None = None) -> None:
        self._settings = settings
        self._audit = audit or LoggedAudit()
        self._store = store
        self._identities = identities or Identities.builtin(store)
        self._keys = keyring
        self._mirrored = mirrored

    def _authenticate(self, name: str, password: str, address: str, via: str,
                      account_limit: int | None = None) -> identity.Login:
        """The login from the identity chain, logging every refusal with the (sanitised) account
        name and client address, never the password, so that guessing shows up in the logs."""
        try:
            return self._identities.login(name, password, address, account_limit=account_limit)
        except RegistryError as err:
            if err.error in (UNAUTHORIZED, TOOMANYREQUESTS):
                fields: dict[str, object] = {"account": peers.printable(name), "address": peers.printable(address),
                                             "via": via}
                if err.error is TOOMANYREQUESTS:
                    fields["retry_after"] = (err.detail or {}).get("retry_after")
                log.warning("login locked out" if err.error is TOOMANYREQUESTS else "failed login",
                            extra={"fields": fields})
            raise

    def _require_admin(self, context: grpc.ServicerContext, call: str) -> Principal:
        """The admin making this call. Every attempt, let in or refused, is an audit record
        (``admin-login``, with the call's name): the account tried, never the password."""
        # Counted per client address *without* the source port, which changes with every connection.
        address = peers.peer_address(context.peer() or "")
        name = ""
        try:
            name, password = self._admin_credentials(context, address)
            principal = self._authenticate(name, password, address, "admin",
                                           self._settings.login_failures * ADMIN_ACCOUNT_FAILURE_FACTOR).principal
            if not principal.admin:
                log.warning("administrative call by a non-admin account",
                            extra={"fields": {"account": principal.name, "address": address}})
                raise RegistryError(DENIED, "administrative calls need an admin account")
        except RegistryError as err:
            self._audit.record(_admin_record(name, "", address, "admin-login", "", call, err.error.code))
            raise
        self._audit.record(_admin_record(principal.name, principal.kind, address, "admin-login", "", call))
        return principal

    @staticmethod
    def _admin_credentials(context: grpc.ServicerContext, address: str) -> tuple[str, str]:
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not isinstance(header, str) or not header.lower().startswith("basic "):
            raise RegistryError(UNAUTHORIZED, "administrative calls need admin credentials")
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("failed login", extra={"fields": {"account": "", "address": address, "via": "admin",
                                                          "reason": "malformed credentials"}})
            raise RegistryError(UNAUTHORIZED, "malformed credentials") from None
        return name, password

    def _change(self, context: grpc.ServicerContext, call: str, action: str, target: str, detail: str,
                change: Callable[[Principal], T]) -> T:
        """Runs an admin change as the admin this call logs in as, and records it with its result
        (``target``: the account or pattern changed; ``detail``: what, never a password)."""
        admin = self._require_admin(context, call)
        address = peers.peer_address(context.peer() or "")
        try:
            result = change(admin)
        except Exception as exc:
            code = exc.error.code if isinstance(exc, RegistryError) else "ERROR"
            self._audit.record(_admin_record(admin.name, admin.kind, address, action, target, detail, code))
            raise
        self._audit.record(_admin_record(admin.name, admin.kind, address, action, target, detail))
        return result

    def ListPublicKeys(self, request: pb.ListPublicKeysRequest,
                       context: grpc.ServicerContext) -> pb.ListPublicKeysResponse:
        return pb.ListPublicKeysResponse(keys=[pb.PublicKey(kid=k.kid, algorithm=ALGORITHM, pem=k.public_pem())
                                               for k in self._keys.verifying()])

    def IssueToken(self, request: pb.IssueTokenRequest, context: grpc.ServicerContext) -> pb.IssueTokenResponse:
        try:
            answer, kind = self._issue_token(request)
        except RegistryError as err:
            metrics.TOKENS_REFUSED.labels(_REFUSAL_REASONS.get(err.error.code, "invalid")).inc()
            raise
        metrics.TOKENS_ISSUED.labels(kind).inc()
        return answer

    def _issue_token(self, request: pb.IssueTokenRequest) -> tuple[pb.IssueTokenResponse, str]:
        # The cheap checks first, so a malformed request costs no bcrypt and no login attempt.
        service = request.service or self._settings.token_service
        if service != self._settings.token_service:
            raise RegistryError(DENIED, f"tokens are issued for service {self._settings.token_service!r} only")
        requested = scopes.parse_many(request.scopes, limit=_MAX_SCOPES)
        backend, stamp = "", None
        if request.refresh_token:
            principal, backend = self._identities.redeem(request.refresh_token)
        elif request.username:
            login = self._authenticate(request.username, request.password, request.client_address, "token")
            principal, backend, stamp = login.principal, login.backend, login.stamp
        else:
            principal = ANONYMOUS
        access = grant(principal, self._store.public_patterns(), requested, self._mirrored)
        issued = tokens.issue(self._keys, self._settings.token_issuer, service, principal.name, access,
                              self._settings.token_ttl, refused(requested, access))
        refresh = ""
        if request.offline and not principal.anonymous:
            refresh = request.refresh_token or self._new_refresh_token(principal.name, backend, stamp)
        log.info("token issued", extra={"fields": {"subject": principal.name or "<anonymous>",
                                                   "client_id": peers.printable(request.client_id),
                                                   "access": [str(s) for s in access]}})
        answer = pb.IssueTokenResponse(token=issued.token, expires_in=issued.expires_in, issued_at=issued.issued_at,
                                       refresh_token=refresh, subject=principal.name,
                                       scopes=[str(s) for s in access if s.actions])
        return answer, "anonymous" if principal.anonymous else principal.kind

    def _new_refresh_token(self, account: str, backend: str, stamp: str | None = None) -> str:
        """A refresh token, bound to the credential stamp the login was checked against (a login that
        raced a password change or a delete gets one that is refused at once); none ("") while Redis
        refuses writes: the access token is still issued, and a client given no refresh token keeps
        logging in with its password (docker stores that instead)."""
        try:
            return self._store.new_refresh_token(account, self._settings.refresh_ttl,
                                                 "" if backend == identity.BUILTIN else backend,
                                                 identity.stamp_digest(stamp) if stamp is not None else "")
        except redis.RedisError as exc:
            reason = redis_refusals.refusal(exc)
            if reason is None:
                raise
            log.warning("no refresh token issued: Redis refuses writes",
                        extra={"fields": {"subject": account, "reason": f"Redis {reason}"}})
            return ""

    def FilterRepositories(self, request: pb.FilterRepositoriesRequest,
                           context: grpc.ServicerContext) -> pb.FilterRepositoriesResponse:
        # A token outlives its account: a deleted (or unknown) account sees what anyone sees,
        # and gets no error code the registry API never sends.
        principal = (self._identities.find(request.account) if request.account else None) or ANONYMOUS
        public = self._store.public_patterns()
        names = [n for n in list(request.repositories)[:_MAX_FILTER]
                 if "pull" in repository_actions(principal, public, n, self._mirrored)]
        return pb.FilterRepositoriesResponse(repositories=names)

    # -- administration (admin credentials required) -----------------------

    def CreateAccount(self, request: pb.CreateAccountRequest, context: grpc.ServicerContext) -> pb.Account:
        kind = request.kind or "user"
        return self._change(context, "CreateAccount", "account-create", request.name,
                            f"kind {kind}" + (", admin" if request.admin else ""),
                            lambda _: _account_pb(self._store.create(request.name, request.password, kind,
                                                                     request.admin)))

    def SetPassword(self, request: pb.SetPasswordRequest, context: grpc.ServicerContext) -> pb.Account:
        return self._change(context, "SetPassword", "password-set", request.name, "",
                            lambda _: _account_pb(self._store.set_password(request.name, request.password)))

    def DeleteAccount(self, request: pb.AccountRef, context: grpc.ServicerContext) -> pb.DeleteAccountResponse:
        def delete(caller: Principal) -> pb.DeleteAccountResponse:
            if request.name == caller.name:
                raise RegistryError(DENIED, "an admin cannot delete their own account")
            self._store.delete(request.name)
            return pb.DeleteAccountResponse()
        return self._change(context, "DeleteAccount", "account-delete", request.name, "", delete)

    def ListAccounts(self, request: pb.ListAccountsRequest, context: grpc.ServicerContext) -> pb.ListAccountsResponse:
        self._require_admin(context, "ListAccounts")
        return pb.ListAccountsResponse(accounts=[_account_pb(p) for p in self._store.all()])

    def Grant(self, request: pb.GrantRequest, context: grpc.ServicerContext) -> pb.Account:
        actions = list(request.grant.actions)
        return self._change(context, "Grant", "grant", request.name,
                            f"{request.grant.pattern} {','.join(actions)}",
                            lambda _: _account_pb(self._store.grant(request.name, request.grant.pattern, actions)))

    def Revoke(self, request: pb.RevokeRequest, context: grpc.ServicerContext) -> pb.Account:
        return self._change(context, "Revoke", "revoke", request.name, request.pattern,
                            lambda _: _account_pb(self._store.revoke(request.name, request.pattern)))

    def SetVisibility(self, request: pb.SetVisibilityRequest,
                      context: grpc.ServicerContext) -> pb.SetVisibilityResponse:
        def change(_: Principal) -> pb.SetVisibilityResponse:
            self._store.set_public(request.pattern, request.public)
            return pb.SetVisibilityResponse()
        return self._change(context, "SetVisibility", "visibility", request.pattern,
                            "public" if request.public else "private", change)

    def ListPublic(self, request: pb.ListPublicRequest, context: grpc.ServicerContext) -> pb.ListPublicResponse:
        self._require_admin(context, "ListPublic")
        return pb.ListPublicResponse(patterns=self._store.public_patterns())

    def RevokeRefreshTokens(self, request: pb.AccountRef,
                            context: grpc.ServicerContext) -> pb.RevokeRefreshTokensResponse:
        return self._change(context, "RevokeRefreshTokens", "refresh-tokens-revoke", request.name, "",
                            lambda _: pb.RevokeRefreshTokensResponse(
                                revoked=self._store.revoke_refresh_tokens(request.name)))

    def RevokeRefreshToken(self, request: pb.RevokeRefreshTokenRequest,
                           context: grpc.ServicerContext) -> pb.RevokeRefreshTokensResponse:
        """No admin needed: the caller holds the token it ends (a bounded one: a valid token is
        ~43 characters, and anything longer is no token of ours)."""
        if not request.refresh_token or len(request.refresh_token) > 256:
            return pb.RevokeRefreshTokensResponse(revoked=0)
        return pb.RevokeRefreshTokensResponse(revoked=self._store.revoke_refresh_token(request.refresh_token))

    def RotateSigningKey(self, request: pb.RotateSigningKeyRequest,
                         context: grpc.ServicerContext) -> pb.ListPublicKeysResponse:
        def rotate(_: Principal) -> pb.ListPublicKeysResponse:
            self._keys.rotate()
            return self.ListPublicKeys(pb.ListPublicKeysRequest(), context)
        return self._change(context, "RotateSigningKey", "signing-key-rotate", "", "", rotate)


def _admin_record(account: str, kind: str, address: str, action: str, target: str, detail: str,
                  result: str = "ok") -> gpb.AuditRecord:
    """An audit record of the admin API. Names and patterns come from the caller: they are sent
    as they are (cut), and the metadata service bounds and cleans every field before it stores one."""
    return gpb.AuditRecord(account=account[:256], account_kind=kind if account else "", address=address,
                           action=action, reference=target[:256], result=result, detail=detail[:1000],
                           request_id=grpcserver.request_id.get()[:64], via="auth")


def bootstrap_admin(settings: AuthSettings, store: AccountStore) -> None:
    """Creates user ``admin`` from WHARF_ADMIN_PASSWORD(_FILE) at first start; never a default password."""
    if store.exists("admin"):
        return
    password = settings.first_admin_password()
    if not password:
        log.warning("no admin account: set WHARF_ADMIN_PASSWORD or WHARF_ADMIN_PASSWORD_FILE and restart")
        return
    store.create("admin", password, "user", admin=True)
    log.info("created the first admin account", extra={"fields": {"account": "admin"}})


async def serve(settings: AuthSettings, address: str | None = None,
                on_port: Callable[[int], None] | None = None, mirrors: Mirrors | None = None,
                environ: Mapping[str, str] | None = None) -> None:
    """Runs the auth service until SIGTERM. Its calls are short but blocking (bcrypt, a blocking
    Redis client), so they run in a pool of ``WHARF_AUTH_WORKERS`` threads under the asyncio
    server every service shares."""
    token = read_token(settings.internal_token_file)  # before anything starts: a bad file stops the service
    client = redisconn.sync_client(settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                   health_check_interval=30, max_connections=2 * settings.workers + 4)  # two pools
    store = AccountStore(client, settings.bcrypt_rounds, settings.login_failures, settings.login_window)
    # The identity chain (services/auth/identity.py): a missing or broken backend stops the service here.
    try:
        identities = identity.load(environ or {}, IdentityContext(client, store), remember=settings.token_ttl + 300)
    except (config_file.ConfigFileError, plugins.PluginError) as exc:
        raise SystemExit(f"wharf-auth: {exc}") from None
    keyring = KeyRing(settings.keys_dir, settings.token_ttl, settings.key_publish_delay)
    bootstrap_admin(settings, store)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="auth")
    # Logins with a password (bcrypt, an LDAP bind) in a pool of their own: 100 logins at once
    # held every thread for seconds, and an anonymous token, a refresh or a catalog filter
    # waited behind them (up to 8.7 s measured; the gateway's deadline then answered 503).
    # Taking turns between client addresses (services/auth/fair.py): a flood of logins from one
    # address queued every other caller's login past the gateway's deadline.
    logins = FairPool(settings.workers, "auth-login")

    def route(method: str, request: Any) -> concurrent.futures.Executor | None:
        if method != "IssueToken" or not request.username:
            return None
        return logins.lane(peers.throttle_bucket(request.client_address))

    service = pb.DESCRIPTOR.services_by_name["Auth"]
    trail = audit_for(settings.metadata_addr, token)

    def register(server: grpc.aio.Server) -> list[str]:
        mirrored = mirror_pulls((u.prefix, u.anonymous) for u in (mirrors or Mirrors()).upstreams)
        servicer = AuthServicer(settings, store, keyring, mirrored, identities, trail)
        pb_grpc.add_AuthServicer_to_server(threaded(servicer, service, pool, route), server)
        return [service.full_name]

    try:
        await grpcserver.serve("auth", address or settings.listen, register, backend_errors=(redis.RedisError,),
                               internal_token=token, on_port=on_port,
                               metrics_address=settings.metrics_addr, otlp_endpoint=settings.otlp_endpoint)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        logins.shutdown(cancel_futures=True)
        await asyncio.to_thread(trail.close)  # what is queued is sent (briefly bounded)


def run(settings: AuthSettings, on_port: Callable[[int], None] | None = None,
        mirrors: Mirrors | None = None, environ: Mapping[str, str] | None = None) -> None:
    asyncio.run(serve(settings, on_port=on_port, mirrors=mirrors, environ=environ))
