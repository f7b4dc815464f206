"""Runs Redis, the metadata service, the blob store and the gateway on one machine.

Every service is a separate process on loopback, as in a real deployment;
Redis persists with AOF under ``$WHARF_DATA_DIR/redis`` and blobs live under
``$WHARF_DATA_DIR/blobstore``, so data survives a restart. Ctrl-C or SIGTERM
stops every process this started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import secrets
import sys
import time
from collections.abc import Mapping

from services.api import admission
from services.api.settings import GatewaySettings
from services.auth import identity
from services.auth.settings import AuthSettings
from services.blobstore import storage
from services.blobstore.settings import BlobStoreSettings, storage_problem
from services.common import config_file, governance, logs, plugins
from services.common.health import gateway_answers, grpc_serving
from services.common.internal_auth import TOKEN_VARIABLE, ensure_token_file
from services.common.settings import check_all, load
from services.common.signals import StopSignal
from services.events import config as events_config
from services.events import sinks
from services.events.settings import EventsSettings
from services.metadata.settings import MetadataSettings
from services.mirror import config as mirror_config
from services.stack import records
from services.stack.lock import DataDirInUse, DataDirLock, port_is_free
from services.stack.processes import (
    Child,
    free_port,
    python_module,
    start_redis,
    wait_until,
)
from services.stack.settings import StackSettings

log = logging.getLogger("wharf.stack")

# Secrets, and the services that need them; every other child is started without them, so a
# crash dump or /proc/<pid>/environ of the gateway does not hold the admin password, the S3 keys
# or a Redis URL (which carries Redis's password: with it, every account's hash and every
# repository's metadata). Only the services that talk to Redis get it.
_SECRETS: dict[str, tuple[str, ...]] = {
    "WHARF_ADMIN_PASSWORD": ("auth",),
    "WHARF_ADMIN_PASSWORD_FILE": ("auth",),
    "WHARF_S3_ACCESS_KEY": ("blobstore",),
    "WHARF_S3_SECRET_KEY": ("blobstore",),
    "WHARF_S3_SECRET_KEY_FILE": ("blobstore",),
    "WHARF_REDIS_URL": ("metadata", "events"),
    "WHARF_AUTH_REDIS_URL": ("auth",),
}


def env_for(service: str, base: dict[str, str], **extra: str) -> dict[str, str]:
    """``base`` plus ``extra``, without the secrets of the other services."""
    foreign = {var for var, owners in _SECRETS.items() if service not in owners}
    return {k: v for k, v in {**base, **extra}.items() if k not in foreign}


def _start_redis(settings: StackSettings, deadline: float) -> tuple[Child, str]:
    redis_dir = (settings.data_dir / "redis").resolve()
    child, url = start_redis(redis_dir, env_for("redis", dict(os.environ)), deadline, settings.redis_server)
    # wharf-gc, run from the same directory, finds this Redis through the file.
    records.write(settings.data_dir.resolve(), records.REDIS_URL, url)
    return child, url


def _admin_password_file(data_dir: pathlib.Path) -> pathlib.Path:
    path = data_dir / records.ADMIN_PASSWORD
    if not path.exists():
        ensure_token_file(path)
        print(f"Generated a password for the first admin account, `admin`, into {path} (readable by you only); "
              "wharf-admin reads it from there.", flush=True)
    return path


def start(settings: StackSettings) -> list[Child]:
    deadline = time.monotonic() + settings.start_timeout
    data_dir = settings.data_dir.resolve()
    children: list[Child] = []
    try:
        redis_url = settings.redis_url
        if not redis_url:
            redis_child, redis_url = _start_redis(settings, deadline)
            children.append(redis_child)
        base = dict(os.environ, WHARF_DATA_DIR=str(data_dir))
        if not base.get(TOKEN_VARIABLE):
            base[TOKEN_VARIABLE] = str(ensure_token_file(data_dir / records.INTERNAL_TOKEN))
        # glibc hands freed megabyte buffers back to the kernel at once by default, and every
        # 1 MiB message of a blob transfer then faults fresh pages in; keeping some slack
        # measured about 1.3x the push throughput for a few MB more resident memory. 32 MiB of
        # slack pushed as fast as 128 (453 vs 452 MB/s) and held less under 500 slow pushes
        # (blob store 215 vs 234-307 MB, bench/load_bench.py --scenarios b).
        base.setdefault("MALLOC_TRIM_THRESHOLD_", str(32 * 1024 * 1024))
        base.setdefault("MALLOC_TOP_PAD_", str(32 * 1024 * 1024))
        # Fewer malloc arenas: many threads each moving megabyte buffers otherwise keep freed
        # memory apart, per arena. Measured with 8 concurrent 256 MiB pushes: a gateway worker
        # peaked at 118-139 MB instead of 215-244, at the same single-push and manifest rates.
        base.setdefault("MALLOC_ARENA_MAX", "2")
        figures = _metrics_addresses(settings)
        metadata_addr = f"127.0.0.1:{free_port(avoid=settings.port)}"
        # wharf-gc and wharf-admin check / export / import, run from the same directory, write through it.
        records.write(data_dir, records.METADATA_ADDRESS, metadata_addr)
        metadata = Child("metadata", python_module("services.metadata"),
                         env_for("metadata", base, WHARF_METADATA_LISTEN=metadata_addr, WHARF_REDIS_URL=redis_url,
                                 **_metrics_variable(figures, "metadata", "WHARF_METADATA_METRICS_ADDR")))
        children.append(metadata)
        blobstores = []
        for replica in range(max(settings.blobstore_replicas, 1)):
            address = f"127.0.0.1:{free_port(avoid=settings.port)}"
            blobstores.append(Child(f"blobstore-{replica}", python_module("services.blobstore"),
                                    env_for("blobstore", base, WHARF_BLOBSTORE_LISTEN=address,
                                            WHARF_BLOBSTORE_EXPOSE_PATHS="true",
                                            **_metrics_variable(figures, f"blobstore-{replica}",
                                                                "WHARF_BLOBSTORE_METRICS_ADDR")),
                                    address=address))
        children.extend(blobstores)
        blobstore_addr = ",".join(b.address for b in blobstores)
        # wharf-gc, run from the same directory, deletes blobs through these.
        records.write(data_dir, records.BLOBSTORE_ADDRESS, blobstore_addr)
        gateway_env = env_for("gateway", base, WHARF_HOST=settings.host, WHARF_PORT=str(settings.port),
                           WHARF_BLOBSTORE_ADDR=blobstore_addr, WHARF_METADATA_ADDR=metadata_addr,
                           # Set empty, pulls stream from the blob store, as where the gateway
                           # runs apart from the blob store's disk (compose, Kubernetes).
                           WHARF_LOCAL_BLOB_ROOT=os.environ.get("WHARF_LOCAL_BLOB_ROOT", str(data_dir / "blobstore")),
                           WHARF_AUTH=settings.auth,
                           **_metrics_variable(figures, "gateway", "WHARF_METRICS_ADDR"))
        if settings.auth == "token":
            auth_addr = f"127.0.0.1:{free_port(avoid=settings.port)}"
            auth_env = env_for("auth", base, WHARF_AUTH_LISTEN=auth_addr, WHARF_AUTH_REDIS_URL=redis_url,
                               WHARF_AUTH_KEYS_DIR=str(data_dir / "auth" / "keys"),
                               WHARF_METADATA_ADDR=metadata_addr,  # the audit log's records of admin changes
                               **_metrics_variable(figures, "auth", "WHARF_AUTH_METRICS_ADDR"))
            if not auth_env.get("WHARF_ADMIN_PASSWORD") and not auth_env.get("WHARF_ADMIN_PASSWORD_FILE"):
                # No password given: token mode must not be a dead end. Generate one (owner-only,
                # beside the internal secret); wharf-admin reads it from there.
                auth_env["WHARF_ADMIN_PASSWORD_FILE"] = str(_admin_password_file(data_dir))
            auth = Child("auth", python_module("services.auth"), auth_env, address=auth_addr)
            children.append(auth)
            wait_until(lambda: grpc_serving(auth_addr), auth, deadline, "auth service")
            # wharf-admin finds the auth service through this file when run from the same directory.
            records.write(data_dir, records.AUTH_ADDRESS, auth_addr)
            gateway_env["WHARF_AUTH_ADDR"] = auth_addr
        wait_until(lambda: grpc_serving(metadata_addr), metadata, deadline, "metadata service")
        for blobstore in blobstores:
            wait_until(lambda b=blobstore: grpc_serving(b.address), blobstore, deadline, blobstore.name)
        # The gateway echoes this on /v2/, so readiness means *our* gateway answered, not
        # whatever else might listen on the port.
        instance = secrets.token_hex(16)
        gateway_env["WHARF_INSTANCE_ID"] = instance
        if events_config.load(os.environ, secrets=False).enabled:
            # The delivery service, when an endpoint is configured (the metadata service then writes
            # the outbox: WHARF_EVENTS_OUTBOX=auto). It needs no address of its own beyond health.
            events_addr = f"127.0.0.1:{free_port(avoid=settings.port)}"
            events = Child("events", python_module("services.events"),
                           env_for("events", base, WHARF_EVENTS_LISTEN=events_addr, WHARF_REDIS_URL=redis_url,
                                   WHARF_PUBLIC_URL=base.get("WHARF_PUBLIC_URL") or base_url(settings),
                                   **_metrics_variable(figures, "events", "WHARF_EVENTS_METRICS_ADDR")),
                           address=events_addr)
            children.append(events)
            wait_until(lambda: grpc_serving(events_addr), events, deadline, "event delivery service")
        gateway = Child("gateway", python_module("services.api"), gateway_env)
        children.append(gateway)
        url = f"{base_url(settings)}/v2/"
        wait_until(lambda: gateway_answers(url, instance), gateway, deadline, "gateway")
        # wharf-admin status (and anyone curious) finds every service's figures through this file.
        records.write(data_dir, records.METRICS, json.dumps(figures, indent=2, sort_keys=True))
    except BaseException:
        stop(children)
        raise
    return children


def _metrics_addresses(settings: StackSettings) -> dict[str, str]:
    """A free loopback port for each service's /metrics (none when WHARF_STACK_METRICS is off)."""
    if not settings.metrics:
        return {}
    names = ["gateway", "metadata", *(f"blobstore-{r}" for r in range(max(settings.blobstore_replicas, 1)))]
    if settings.auth == "token":
        names.append("auth")
    if events_config.load(os.environ, secrets=False).enabled:
        names.append("events")
    return {name: f"127.0.0.1:{free_port(avoid=settings.port)}" for name in names}


def _metrics_variable(figures: dict[str, str], name: str, variable: str) -> dict[str, str]:
    return {variable: figures[name]} if name in figures else {}


def base_url(settings: StackSettings) -> str:
    return f"{'https' if settings.tls_cert_file else 'http'}://{settings.host}:{settings.port}"


def stop(children: list[Child]) -> None:
    for child in reversed(children):
        child.stop()


def extension_problems(environ: Mapping[str, str]) -> list[str]:
    """The storage driver, event sinks, admission policies and identity backends named must be installed and load
    (services/common/plugins.py)."""
    try:
        name = config_file.merged(environ).get("WHARF_STORAGE", "filesystem")
        problem = storage_problem(name)  # also the blob store settings' rule, which other problems may hide
        if problem:
            return [problem]
        storage.driver_class(name)
        storage.options(environ)
    except (plugins.PluginError, config_file.ConfigFileError) as exc:
        return [f"WHARF_STORAGE: {exc}"]
    try:
        for endpoint in events_config.load(environ, secrets=False).active:
            sinks.check(endpoint)  # built and closed: a sink refusing its options fails the check
    except (plugins.PluginError, config_file.ConfigFileError) as exc:
        return [f"events: {exc}"]
    try:
        admission.load(environ)
    except (plugins.PluginError, config_file.ConfigFileError) as exc:
        return [f"admission: {exc}"]
    try:
        identity.check(environ)
    except (plugins.PluginError, config_file.ConfigFileError) as exc:
        return [f"identity: {exc}"]
    return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wharf-stack", description="Runs the whole registry on this machine "
                                     "(what `make run` does); every setting is an environment variable (README).")
    parser.add_argument("--check", action="store_true", help="check every service's settings, then exit "
                        "(0: all good; 2: one line per problem)")
    args = parser.parse_args(argv)
    # Every service's settings, as they will read them: a bad value stops the runner here, with
    # one line per problem, instead of a child crashing after the others started.
    found = check_all(os.environ, StackSettings, GatewaySettings, BlobStoreSettings, MetadataSettings, AuthSettings,
                      EventsSettings)
    found += mirror_config.problems(os.environ)  # the mirrors' upstreams (gateway and blob store read them)
    found += events_config.problems(os.environ)  # the event endpoints (the delivery service reads them)
    found += extension_problems(os.environ)  # storage driver, event sinks, admission policies: extensions
    found += governance.problems(os.environ)  # the policy file (immutable tags, quotas, retention, rate limits)
    found = list(dict.fromkeys(found))
    if found:
        sys.stderr.write("".join(f"wharf-stack: {line}\n" for line in found))
        sys.exit(2)
    if args.check:
        print("wharf-stack: the settings are valid", flush=True)
        return
    settings = load(StackSettings, os.environ)
    logs.configure(os.environ.get("WHARF_LOG_LEVEL", "info"))
    try:
        lock = DataDirLock(settings.data_dir.resolve())
    except DataDirInUse as exc:
        sys.stderr.write(f"wharf-stack: {exc}\n")
        sys.exit(2)
    if not port_is_free(settings.host, settings.port):
        sys.stderr.write(f"wharf-stack: {settings.host}:{settings.port} is already in use (another registry?); "
                         "set WHARF_PORT to a free port\n")
        sys.exit(2)
    lock.record(base_url(settings))
    stopping = StopSignal()
    try:
        children = start(settings)
    except RuntimeError as exc:
        log.error("start failed", extra={"fields": {"error": str(exc)}})
        sys.exit(1)
    print(f"Wharf is serving the registry at {base_url(settings)} "
          f"(data in {settings.data_dir.resolve()}); Ctrl-C stops it.", flush=True)
    figures = records.read(settings.data_dir.resolve(), records.METRICS)
    if figures and json.loads(figures):
        listed = ", ".join(f"{name} http://{address}/metrics" for name, address in json.loads(figures).items())
        print(f"Prometheus metrics: {listed} (also in {settings.data_dir / records.METRICS}; "
              "`.venv/bin/wharf-admin status` sums them up).", flush=True)
    if settings.auth == "none":
        print("Authentication is off (WHARF_AUTH=none), fine on loopback only. To require tokens: "
              "`WHARF_AUTH=token make run`, then `.venv/bin/wharf-admin user add alice` "
              "(see README, Authentication).", flush=True)
    else:
        auth_child = next(c for c in children if c.name == "auth")
        print(f"Token authentication is on (the auth service listens on {auth_child.address}). Manage "
              "accounts with `.venv/bin/wharf-admin user add <name>` from this directory (or with "
              f"WHARF_DATA_DIR={settings.data_dir}).", flush=True)
    status = 0
    while not stopping.wait(0.5):
        dead = [c for c in children if not c.alive()]
        if dead:
            log.error("a service exited", extra={"fields": {"service": dead[0].name,
                                                            "status": dead[0].process.returncode}})
            status = 1
            break
    stop(children)
    sys.exit(status)


if __name__ == "__main__":
    main()
