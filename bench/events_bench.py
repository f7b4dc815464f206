"""The cost of events, and how fast they arrive: pushes and manifest GETs with events off vs on,
then the delivery latency from a write to a webhook receiver at a steady push rate.

    .venv/bin/python bench/events_bench.py            # about 8 minutes
    .venv/bin/python bench/events_bench.py --quick    # under 2 minutes, for a look

Three Wharf stacks side by side (``python -m services.stack``, warn level, no access logs, no
/metrics): "off" without an events section; "on" with one endpoint (``WHARF_EVENTS_FILE``, the
defaults: pull_sample 1.0, so every manifest GET is a pull event); "nopull" with the same endpoint
ignoring pulls (``ignore: {actions: [pull]}``). The endpoints are a webhook receiver the bench runs
in a forked process of its own (so that it takes no GIL from the clients being timed): it answers
200 at once and notes each request's arrival time (after its body) for the bench to read later.

1. A/B rounds, ``--rounds`` of them, the runs in ABBA order (reversed every other round), each
   ``--ab-seconds`` long:
   - push (off, on): ``--pushers`` connections push images (``--layers`` random layers of
     ``--layer-kib`` KiB, a config, a tagged OCI manifest); images/s;
   - get1 (off, on): ``wrk -t2 -c32`` GETs one manifest by tag as one client. The gateway keeps
     one pull event per client and thing per second, so this is the cheap case;
   - getN (off, on, nopull): the same, but every request carries a User-Agent of its own (a wrk
     Lua script), so every GET is another client's and a pull event of its own: the dear case,
     what a fleet of nodes pulling costs.
   After each run the bench waits until the endpoint's backlog in the outbox is 0 (so no delivery
   spills into the next run) and says how long that took. CPU per image / per GET is every stack
   process's CPU time (from /proc) from the start of the run to the end of that drain, divided by
   the count, per kind of process; the receiver's is shown apart (on this 2-core machine it
   competes with the stack; in production it runs elsewhere). Every delivered event is checked:
   one push event per blob and manifest pushed, one pull per GET on getN, no id twice.
2. Delivery latency: ``--rate`` tagged pushes per second for ``--seconds``, each a manifest PUT
   of a new small manifest (its blobs uploaded once beforehand) into one of 16 repositories
   (spread over the outbox's shards), paced from a schedule over ``--connections`` connections;
   first on "off" (the rate, PUT times and CPU per push without events, for comparison), then on
   "on". Latency = the receiver's arrival time - the event's ``timestamp`` (Redis's clock when the
   write committed, whole ms; the same machine's clock); also from the client's PUT to the arrival.
   Every push must arrive once: missing and duplicated ids are counted. (About 40 manifest PUTs in
   flight at once stall for seconds, events on or off — the metadata service logs "replicas did not
   confirm an invalidation in time" — so the default of 16 connections stays well below that.)

Printed: the A/B figures per round with medians and on/off ratios, CPU per operation by process
kind, what was delivered against what was expected, the latency table, and the stacks' log lines
at warning level. No figure is judged here (the issue's targets: on/off within 5%, every event
delivered once, latency well under a second); ratios within about +-20% of 1 are ties on these
machines (../shared/PERFORMANCE-NOTES.md). The exit status is 0 whatever the figures (1 when the
bench itself fails).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.server
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import redis
from common import (
    OCI_MANIFEST,
    BenchError,
    Client,
    Server,
    cell,
    exit_on_sigterm,
    print_grid,
    push_image,
    push_small,
    run_main,
    signals_held,
    wharf,
)
from proctree import TICKS, argv_of, descendants, process_kind, stat_fields

from services.metadata import redis_keys as keys
from services.stack import records

ENDPOINT = "bench"
GET_REPOSITORY, GET_TAG = "bench/get", "latest"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
BLOB_TYPE = keys.BLOB_MEDIA_TYPE
LATENCY_REPOSITORIES = 16
# What each kind of run is, and the modes it runs in.
KINDS = {"push": "push", "get1": "GET, one client", "getN": "GET, a new client each"}
PLAN = {"push": ("off", "on"), "get1": ("off", "on"), "getN": ("off", "on", "nopull")}
# wrk's requests, each with a User-Agent of its own: every GET is another client's, so none is
# folded into another's pull event (the gateway keeps one per client and thing per second).
MANY_CLIENTS_LUA = """
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("id", thread_count)
end
local sent = 0
function request()
  sent = sent + 1
  wrk.headers["User-Agent"] = "bench-client/" .. id .. "-" .. sent
  return wrk.format()
end
"""
DRAIN_TIMEOUT = 180.0
# Pull events reach the outbox in the gateway's batches, one a second: the outbox's sequence must
# stay still this long (with nothing left to deliver) before a run counts as drained.
SETTLE = 2.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the receiver -------------------------------------------------------------------------------

class _Hook(http.server.BaseHTTPRequestHandler):
    """POST <path>: 200 at once, the body kept with its arrival time. GET /take?path=<path>: the
    events received on that path since the last take, parsed: [id, action, repository, tag,
    mediaType, timestamp (epoch s), arrival (epoch s)] each."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    bodies: ClassVar[dict[str, list[tuple[float, bytes]]]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        arrived = time.time()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with self.lock:
            self.bodies.setdefault(self.path, []).append((arrived, body))

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        with self.lock:
            taken = self.bodies.pop(query.get("path", [""])[0], [])
        events = []
        for arrived, body in taken:
            for event in json.loads(body)["events"]:
                target = event.get("target", {})
                stamp = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                events.append([event["id"], event["action"], target.get("repository", ""), target.get("tag", ""),
                               target.get("mediaType", ""), stamp, arrived])
        answer = json.dumps({"requests": len(taken), "events": events}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _receive(server: http.server.ThreadingHTTPServer) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server.serve_forever()


@dataclass
class Receiver:
    url: str
    pid: int

    def take(self, path: str) -> dict[str, Any]:
        client = Client(self.url)
        try:
            _, body = client.call("GET", f"/take?path={urllib.parse.quote(path)}")
        finally:
            client.close()
        return dict(json.loads(body))


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    """The webhook receiver in a forked process (it binds before the fork), stopped at the end."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.daemon_threads = True
    context = multiprocessing.get_context("fork")
    process = context.Process(target=_receive, args=(server,), name="webhook-receiver", daemon=True)
    with signals_held() as release:
        process.start()
        server.socket.close()  # the child serves; this copy is not needed here
        try:
            release()
            assert process.pid is not None
            yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", process.pid)
        finally:
            with signals_held():
                process.terminate()
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()


# -- the stacks' side ---------------------------------------------------------------------------

@dataclass
class Stack:
    mode: str
    server: Server
    data_dir: Path
    log_path: Path
    hook_path: str | None  # the receiver's path its endpoint posts to (None: events off)
    redis: redis.Redis | None = None

    def connect(self) -> None:
        url = records.read(self.data_dir, records.REDIS_URL)
        if self.hook_path and url:
            self.redis = redis.Redis.from_url(url)

    def backlog(self) -> tuple[int, int]:
        """(events the endpoint has yet to receive, the outbox's last sequence numbers summed)."""
        if self.redis is None:
            return 0, 0
        shards = range(keys.OUTBOX_SHARDS)
        seqs = [int(s or 0) for s in self.redis.mget([keys.outbox_seq(s) for s in shards])]
        cursors = self.redis.hmget(keys.event_cursor(ENDPOINT), [str(s) for s in shards])
        delivered = [int(c.split(b" ")[1]) if c else 0 for c in cursors]
        return sum(max(0, s - d) for s, d in zip(seqs, delivered, strict=True)), sum(seqs)

    def status(self) -> dict[str, int]:
        if self.redis is None:
            return {}
        found = self.redis.hgetall(keys.event_status(ENDPOINT))
        return {k.decode(): int(v) for k, v in found.items() if k.decode() in ("delivered", "failed", "dead",
                                                                                 "overflow")}

    def drain(self) -> float:
        """Waits until the endpoint has every event (and the gateways' pull batches are in):
        the seconds until its backlog was last seen reaching 0."""
        if self.redis is None:
            return 0.0
        started = time.monotonic()
        empty_since: float | None = None
        last_total = -1
        while time.monotonic() - started < DRAIN_TIMEOUT:
            waiting, total = self.backlog()
            now = time.monotonic()
            if waiting or total != last_total or empty_since is None:
                empty_since = None if waiting else now
            elif empty_since is not None and now - empty_since >= SETTLE:
                return empty_since - started
            last_total = total
            time.sleep(0.05)
        raise BenchError(f"[{self.mode}] the endpoint's backlog is still {self.backlog()[0]} after {DRAIN_TIMEOUT} s")

    def warnings(self) -> list[str]:
        """The stack's log lines (warning level and above: the stacks log nothing less)."""
        try:
            return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
        except OSError:
            return []


def events_file(path: Path, url: str, ignore_pulls: bool) -> Path:
    text = f"endpoints:\n  - name: {ENDPOINT}\n    url: {url}\n    timeout: 5s\n"
    if ignore_pulls:
        text += "    ignore:\n      actions: [pull]\n"
    path.write_text(text)
    return path


def start_stacks(stacks: ExitStack, tmp: Path, hook: Receiver, modes: tuple[str, ...]) -> dict[str, Stack]:
    started = {}
    for mode in modes:
        workdir = tmp / mode
        workdir.mkdir()
        env = {"WHARF_STACK_METRICS": "false", "WHARF_CONFIG": "", "WHARF_EVENTS_FILE": ""}
        hook_path = None
        if mode != "off":
            hook_path = f"/hook/{mode}"
            env["WHARF_EVENTS_FILE"] = str(events_file(workdir / "events.yaml", hook.url + hook_path,
                                                       ignore_pulls=mode == "nopull"))
        server = stacks.enter_context(wharf(workdir, env, name=f"wharf events={mode}"))
        started[mode] = Stack(mode, server, workdir / "data", workdir / "wharf.log", hook_path)
        started[mode].connect()
    return started


class Cpu:
    """CPU seconds of a stack's processes, per kind (redis, metadata, blob store, gateway, events,
    stack supervisor), and of the receiver, between ``start`` and ``stop``."""

    def __init__(self, root: int, receiver_pid: int) -> None:
        tree = descendants(root)
        self._kinds = {pid: self._kind(argv_of(pid), argv_of(ppid)) for pid, ppid in tree.items()}
        self._receiver = receiver_pid

    @staticmethod
    def _kind(argv: list[str], parent_argv: list[str]) -> str:
        if "services.events" in argv:
            return "events"
        kind = process_kind(argv, parent_argv)
        return "gateway" if kind.startswith("gateway") else kind

    @staticmethod
    def _ticks(pids: list[int]) -> dict[int, int]:
        found = {}
        for pid in pids:
            with contextlib.suppress(OSError, IndexError):
                fields = stat_fields(pid)
                found[pid] = int(fields[11]) + int(fields[12])
        return found

    def start(self) -> None:
        self._before = self._ticks([*self._kinds, self._receiver])

    def stop(self) -> dict[str, Any]:
        after = self._ticks([*self._kinds, self._receiver])
        used = {pid: (after[pid] - self._before[pid]) / TICKS for pid in after if pid in self._before}
        kinds: dict[str, float] = {}
        for pid, kind in self._kinds.items():
            kinds[kind] = kinds.get(kind, 0.0) + used.get(pid, 0.0)
        return {"stack_cpu_s": sum(kinds.values()), "events_cpu_s": kinds.get("events", 0.0),
                "receiver_cpu_s": used.get(self._receiver, 0.0), "cpu_by_kind": dict(kinds)}


# -- pushes -------------------------------------------------------------------------------------

def push_one(client: Client, repository: str, tag: str, layer_bytes: int, layers: int) -> int:
    """Random layers + config + tagged manifest; returns the blobs pushed."""
    descriptors = [{"mediaType": LAYER_TYPE, "digest": push_small(client, repository, data), "size": len(data)}
                   for data in (os.urandom(layer_bytes) for _ in range(layers))]
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": descriptors,
                           "config": {"mediaType": CONFIG_TYPE, "digest": push_small(client, repository, config),
                                      "size": len(config)}}).encode()
    client.call("PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST}, expect=201)
    return layers + 1


def pushes(url: str, pushers: int, seconds: float, layer_bytes: int, layers: int, label: str) -> dict[str, float]:
    stop = time.monotonic() + seconds
    images = [0] * pushers
    blobs = [0] * pushers

    def work(number: int) -> None:
        client = Client(url)
        try:
            while time.monotonic() < stop:
                blobs[number] += push_one(client, f"bench/push-{number}", f"{label}-{images[number]}", layer_bytes,
                                          layers)
                images[number] += 1
        finally:
            client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(pushers) as pool:
        list(pool.map(work, range(pushers)))
    elapsed = time.perf_counter() - started
    return {"images": sum(images), "blobs": sum(blobs), "images_s": sum(images) / elapsed}


def wrk_get(url: str, seconds: int, script: Path | None) -> dict[str, float]:
    """``wrk -t2 -c32`` GETs of ``url`` with the OCI manifest Accept header (and ``script``);
    fails on any non-2xx answer or more than 1% socket errors."""
    argv = [shutil.which("wrk") or "/usr/bin/wrk", "-t2", "-c32", f"-d{seconds}s", "-H", f"Accept: {OCI_MANIFEST}"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rate, total = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if not rate or not total:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = sum(int(n) for n in errors.groups()) if errors else 0
    if "Non-2xx" in out or failed > max(10, int(total.group(1)) // 100):
        raise BenchError(f"wrk saw failures at {url}:\n{out}")
    return {"rps": float(rate.group(1)), "requests": int(total.group(1))}


# -- checking what arrived ----------------------------------------------------------------------

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}


def quantiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max (nearest rank) in ms; empty for no values."""
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {name: 1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]
            for name, share in QUANTILES.items()}


def tally(events: list[list[Any]]) -> dict[str, Any]:
    """Counts per action, ids seen more than once, and the pull events' latencies."""
    ids = Counter(e[0] for e in events)
    return {"by_action": dict(Counter(e[1] for e in events)),
            "duplicates": sum(n - 1 for n in ids.values() if n > 1),
            "pull_latency": [e[6] - e[5] for e in events if e[1] == "pull"]}


# -- the A/B rounds -----------------------------------------------------------------------------

def one_run(stack: Stack, hook: Receiver, args: argparse.Namespace, kind: str, label: str) -> dict[str, Any]:
    cpu = Cpu(stack.server.root_pid, hook.pid)
    before = stack.status()
    cpu.start()
    if kind == "push":
        result: dict[str, Any] = pushes(stack.server.url, args.pushers, args.ab_seconds, args.layer_kib * 1024,
                                        args.layers, label)
        count = result["images"]
    else:
        result = wrk_get(f"{stack.server.url}/v2/{GET_REPOSITORY}/manifests/{GET_TAG}", int(args.ab_seconds),
                         args.many_clients_lua if kind == "getN" else None)
        count = result["requests"]
    result["drain_s"] = stack.drain()
    result.update(cpu.stop())
    result["ops"] = count
    result["cpu_ms_per_op"] = 1000 * result["stack_cpu_s"] / max(count, 1)
    if stack.hook_path:
        arrived = hook.take(stack.hook_path)
        result.update(tally(arrived["events"]), deliveries=arrived["requests"])
        after = stack.status()
        result["status"] = {k: after.get(k, 0) - before.get(k, 0) for k in ("failed", "dead", "overflow")}
        if kind == "push":
            result["expected"] = result["images"] + result["blobs"]
        elif kind == "getN":
            result["expected"] = result["requests"] if stack.mode == "on" else 0
        else:
            result["expected"] = None  # one client: at most one pull event per second and gateway worker
    return result


def action_of(kind: str) -> str:
    return "push" if kind == "push" else "pull"


def describe(kind: str, mode: str, r: dict[str, Any]) -> str:
    rate = f"{r['images_s']:.1f} images/s" if kind == "push" else f"{r['rps']:.0f} GET/s"
    text = f"{rate}, {r['cpu_ms_per_op']:.3f} CPU ms/op"
    if mode != "off":
        got = ", ".join(f"{n} {a}" for a, n in sorted(r["by_action"].items())) or "no events"
        expected = "" if r["expected"] is None else f" (expected {r['expected']} {action_of(kind)})"
        text += (f", events service {r['events_cpu_s']:.1f} s CPU, receiver {r['receiver_cpu_s']:.1f} s; "
                 f"delivered {got} in {r['deliveries']} POSTs{expected}, "
                 f"{r['duplicates']} duplicate ids, backlog empty {r['drain_s']:.1f} s after")
        if any(r["status"].values()):
            text += f", status {r['status']}"
    return text


def ab_rounds(stacks: dict[str, Stack], hook: Receiver, args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """Per round, each mode's runs (PLAN); every other round in reverse order."""
    plan = [(kind, mode) for mode in ("off", "on", "nopull") for kind in KINDS if mode in PLAN[kind]]
    done: list[tuple[str, str, dict]] = []
    for number in range(args.rounds):
        for kind, mode in (plan if number % 2 == 0 else plan[::-1]):
            result = one_run(stacks[mode], hook, args, kind, f"r{number}")
            log(f"round {number + 1} {mode:6s} {kind}: {describe(kind, mode, result)}")
            done.append((kind, mode, result))
    return done


# -- delivery latency ---------------------------------------------------------------------------

def prepare_latency(url: str) -> list[tuple[str, bytes]]:
    """One config and one layer in each latency repository; the manifest template of each."""
    client = Client(url)
    try:
        prepared = []
        for number in range(LATENCY_REPOSITORIES):
            repository = f"bench/latency-{number}"
            layer = os.urandom(4096)
            config = json.dumps({"architecture": "amd64", "os": "linux", "repository": repository}).encode()
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": CONFIG_TYPE, "digest": push_small(client, repository, config),
                                   "size": len(config)},
                        "layers": [{"mediaType": LAYER_TYPE, "digest": push_small(client, repository, layer),
                                    "size": len(layer)}]}
            prepared.append((repository, json.dumps(manifest).encode()))
    finally:
        client.close()
    return prepared


def paced_pushes(url: str, prepared: list[tuple[str, bytes]], rate: float, seconds: float, connections: int,
                 label: str = "lat") -> list[dict[str, Any]]:
    """Manifest PUTs on a schedule (push i at start + i/rate), each a new manifest under a new tag."""
    total = int(rate * seconds)
    slots = iter(range(total))
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    done: list[dict[str, Any]] = []

    def work(_: int) -> None:
        client = Client(url)
        try:
            while True:
                with lock:
                    index = next(slots, None)
                if index is None:
                    return
                delay = start + index / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                repository, template = prepared[index % len(prepared)]
                tag = f"{label}-{index}"
                manifest = template[:-1] + f', "annotations": {{"bench.push": "{tag}"}}}}'.encode()
                sent, began = time.time(), time.perf_counter()
                client.call("PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST},
                            expect=201)
                took = time.perf_counter() - began
                done.append({"repository": repository, "tag": tag, "sent": sent, "put_s": took,
                             "digest": f"sha256:{hashlib.sha256(manifest).hexdigest()}", "late_s": max(0.0, -delay)})
        finally:
            client.close()

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(work, range(connections)))
    return done


def latency_run(stack: Stack, hook: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    """The paced pushes on ``stack``; with events on, what arrived of them and when."""
    prepared = prepare_latency(stack.server.url)
    stack.drain()
    if stack.hook_path:
        hook.take(stack.hook_path)  # the preparation's events
    before = stack.status()
    log(f"latency: {args.rate:g} manifest pushes/s for {args.seconds:g} s on the '{stack.mode}' stack...")
    cpu = Cpu(stack.server.root_pid, hook.pid)
    cpu.start()
    sent = paced_pushes(stack.server.url, prepared, args.rate, args.seconds, args.connections)
    starts = [p["sent"] for p in sent]
    span = max(starts) - min(starts) if len(starts) > 1 else 0.0
    drain_s = stack.drain()
    used = cpu.stop()
    result: dict[str, Any] = {
        "pushes": len(sent), "rate": (len(sent) - 1) / span if span else None, "drain_s": drain_s,
        "put_ms": quantiles_ms([p["put_s"] for p in sent]),
        "late_max_ms": 1000 * max((p["late_s"] for p in sent), default=0.0),
        "cpu_ms_per_push": 1000 * used["stack_cpu_s"] / max(len(sent), 1),
        "cpu_ms_by_kind": {k: 1000 * v / max(len(sent), 1) for k, v in used["cpu_by_kind"].items()},
        "receiver_cpu_s": used["receiver_cpu_s"]}
    if not stack.hook_path:
        return result
    arrived = hook.take(stack.hook_path)
    after = stack.status()
    events = arrived["events"]
    wanted = {(p["repository"], p["tag"]): p for p in sent}
    found: dict[tuple[str, str], list[list[Any]]] = {}
    others = 0
    for event in events:
        key = (event[2], event[3])
        if event[1] == "push" and event[4] == OCI_MANIFEST and key in wanted:
            found.setdefault(key, []).append(event)
        else:
            others += 1
    ids = Counter(e[0] for e in events)
    latency = [matched[0][6] - matched[0][5] for matched in found.values()]
    end_to_end = [matched[0][6] - wanted[key]["sent"] for key, matched in found.items()]
    result.update({
        "expected": len(wanted), "delivered": sum(len(m) for m in found.values()), "distinct": len(found),
        "missing": len(wanted) - len(found), "duplicate_ids": sum(n - 1 for n in ids.values() if n > 1),
        "repeated_pushes": sum(1 for m in found.values() if len(m) > 1), "other_events": others,
        "deliveries": arrived["requests"],
        "status": {k: after.get(k, 0) - before.get(k, 0) for k in ("failed", "dead", "overflow")},
        "latency_ms": quantiles_ms(latency), "end_to_end_ms": quantiles_ms(end_to_end)})
    return result


# -- report -------------------------------------------------------------------------------------

def medians(runs: list[tuple[str, str, dict]], kind: str, mode: str, key: str) -> tuple[list[float], float | None]:
    values = [r[key] for k, m, r in runs if k == kind and m == mode]
    return values, statistics.median(values) if values else None


def ab_table(runs: list[tuple[str, str, dict]], args: argparse.Namespace, load_note: str,
             summary: dict[str, Any]) -> None:
    lines = []
    figures = [("push", "images/s", "images_s", 1), ("push", "CPU ms/image", "cpu_ms_per_op", 2),
               ("get1", "GET/s, one client", "rps", 0), ("get1", "CPU ms/GET, one client", "cpu_ms_per_op", 3),
               ("getN", "GET/s, new clients", "rps", 0), ("getN", "CPU ms/GET, new clients", "cpu_ms_per_op", 3)]
    for kind, label, key, digits in figures:
        for mode in PLAN[kind]:
            values, median = medians(runs, kind, mode, key)
            summary[f"{mode} {label}"] = median
            lines.append([f"{mode:6s} {label}", *[cell(v, digits) for v in values], cell(median, digits)])
        base = summary[f"off {label}"]
        offs, _ = medians(runs, kind, "off", key)
        for mode in PLAN[kind][1:]:
            ons, _ = medians(runs, kind, mode, key)
            ratio = summary[f"{mode} {label}"] / base if base else None
            summary[f"{mode}/off {label}"] = ratio
            lines.append([f"  {mode}/off", *[cell(b / a if a else None, 3) for a, b in zip(offs, ons, strict=True)],
                          cell(ratio, 3)])
    for kind in KINDS:
        for mode in PLAN[kind][1:]:
            for label, key in (("events service CPU s", "events_cpu_s"), ("receiver CPU s", "receiver_cpu_s"),
                               ("s until backlog empty", "drain_s")):
                values, median = medians(runs, kind, mode, key)
                lines.append([f"{mode:6s} {kind}: {label}", *[cell(v, 2) for v in values], cell(median, 2)])
    print(f"\nevents off vs on (one endpoint: a receiver in its own process), {args.rounds} round(s) in ABBA order, "
          f"{args.ab_seconds:g} s per run;\npush: {args.pushers} connections, images of {args.layers} x "
          f"{args.layer_kib} KiB random layers + config + tagged manifest;\nGET: wrk -t2 -c32, one manifest by tag, "
          "either as one client or with a User-Agent of its own per request (every GET a pull event);\n"
          "CPU: every stack process from the run's start until the endpoint's backlog was 0 (receiver excluded);\n"
          f"on/off: the issue's target is within 5%; +-20% is a tie on this machine;\n{load_note}\n")
    print_grid(["figure", *[f"round {n + 1}" for n in range(args.rounds)], "median"], lines)


def cpu_table(runs: list[tuple[str, str, dict]], latency: dict[str, dict[str, Any]]) -> None:
    """CPU per operation by process kind: medians over the rounds."""
    columns: list[tuple[str, list[dict[str, float]]]] = []
    for kind in KINDS:
        unit, scale = ("ms/image", 1000.0) if kind == "push" else ("us/GET", 1e6)
        for mode in PLAN[kind]:
            per_run = [{k: scale * v / max(r["ops"], 1) for k, v in {**r["cpu_by_kind"],
                                                                      "receiver": r["receiver_cpu_s"]}.items()}
                       for k_, m, r in runs if k_ == kind and m == mode]
            columns.append((f"{kind} {mode} {unit}", per_run))
    for mode, result in latency.items():
        columns.append((f"paced {mode} ms/push", [{**result["cpu_ms_by_kind"],
                                                    "receiver": 1000 * result["receiver_cpu_s"]
                                                    / max(result["pushes"], 1)}]))
    kinds = sorted({k for _, per_run in columns for r in per_run for k in r}, key=lambda k: (k == "receiver", k))
    lines = []
    for kind in [*kinds, "stack total"]:
        row = [kind]
        for _, per_run in columns:
            if kind == "stack total":
                values = [sum(v for k, v in r.items() if k != "receiver") for r in per_run]
            else:
                values = [r.get(kind, 0.0) for r in per_run]
            row.append(cell(statistics.median(values), 1) if values else "-")
        lines.append(row)
    print("\nCPU per operation by process (medians of the rounds; from each run's start until its backlog was 0; "
          "get1 = one client, getN = new clients):")
    print_grid(["process", *[name for name, _ in columns]], lines)


def delivery_table(runs: list[tuple[str, str, dict]], summary: dict[str, Any]) -> None:
    print("\nevents delivered during the A/B runs. Expected: one push event per blob and manifest pushed; for "
          "getN on 'on', one pull per GET\n(wrk counts only the GETs it completed: up to 32 more were answered); "
          "for get1 at most one per second and gateway worker; none on 'nopull':")
    checks = []
    for kind in KINDS:
        for mode in PLAN[kind][1:]:
            chosen = [r for k, m, r in runs if k == kind and m == mode]
            action = action_of(kind)
            expected = None if chosen[0]["expected"] is None else sum(r["expected"] for r in chosen)
            delivered = sum(r["by_action"].get(action, 0) for r in chosen)
            other = sum(n for r in chosen for a, n in r["by_action"].items() if a != action)
            status: Counter[str] = Counter()
            for r in chosen:
                status.update(r["status"])
            latencies = quantiles_ms([x for r in chosen for x in r["pull_latency"]])
            missing = "-" if expected is None else str(max(0, expected - delivered))
            checks.append([f"{mode} {kind}", f"{cell(expected)} {action}", str(delivered), missing, str(other),
                           str(sum(r["duplicates"] for r in chosen)),
                           str(status["failed"]), str(status["dead"]), str(status["overflow"]),
                           cell(latencies.get("p50"), 0), cell(latencies.get("p99"), 0),
                           cell(latencies.get("max"), 0)])
            summary[f"{mode} {kind} delivery"] = {"expected": expected, "delivered": delivered, "other": other,
                                                  "status": dict(status), "pull_latency_ms": latencies}
    print_grid(["runs", "expected", "delivered", "missing (at least)", "other actions", "duplicate ids",
                "failed POSTs", "dead", "overflow", "pull latency p50 ms", "p99 ms", "max ms"], checks)


def latency_table(latency: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\npaced manifest pushes: asked {args.rate:g}/s for {args.seconds:g} s, into {LATENCY_REPOSITORIES} "
          f"repositories over {args.connections} connections (each a new manifest under a new tag)")
    rows = []
    for mode, r in latency.items():
        rows.append([f"{mode}: achieved pushes/s (first to last start)", cell(r["rate"], 1), "", "", ""])
        rows.append([f"{mode}: manifest PUT response, ms", *[cell(r["put_ms"].get(k), 1) for k in QUANTILES]])
        rows.append([f"{mode}: latest push behind schedule, ms", cell(r["late_max_ms"], 0), "", "", ""])
    on = latency["on"]
    rows.append(["on: event timestamp -> arrival, ms", *[cell(on["latency_ms"].get(k), 1) for k in QUANTILES]])
    rows.append(["on: client PUT start -> arrival, ms", *[cell(on["end_to_end_ms"].get(k), 1) for k in QUANTILES]])
    print_grid(["measure", *QUANTILES], rows)
    print(f"on: {on['expected']} pushes; delivered {on['delivered']} ({on['distinct']} distinct), missing "
          f"{on['missing']}, duplicate ids {on['duplicate_ids']}, pushes announced more than once "
          f"{on['repeated_pushes']}, other events {on['other_events']}; {on['deliveries']} POSTs; "
          f"failed/dead/overflow {on['status']}; backlog empty {on['drain_s']:.1f} s after the last push\n"
          "(event timestamps are whole ms: a latency reads up to 1 ms high)")


def print_report(runs: list[tuple[str, str, dict]], latency: dict[str, dict[str, Any]], args: argparse.Namespace,
                 load_note: str, log_lines: dict[str, list[str]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    ab_table(runs, args, load_note, summary)
    cpu_table(runs, latency)
    delivery_table(runs, summary)
    latency_table(latency, args)
    for mode, found in log_lines.items():
        print(f"\n[{mode} stack] {len(found)} log line(s) at warning level or above" + ("; the last ones:" if found
                                                                                      else ""))
        for line in found[-10:]:
            print(f"  {line[:400]}")
    summary["latency"] = latency
    return summary


# -- main ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="A/B rounds (each: every mode's push and GET run)")
    parser.add_argument("--ab-seconds", type=float, default=10.0, help="duration of each push and GET run")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the paced latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="manifest pushes per second in the latency run")
    parser.add_argument("--connections", type=int, default=16,
                        help="connections the paced pushes share (about 40 concurrent manifest PUTs stall Wharf "
                        "for seconds, events on or off: keep it well below)")
    parser.add_argument("--pushers", type=int, default=8, help="pushing connections in the push runs")
    parser.add_argument("--layers", type=int, default=3, help="layers per pushed image")
    parser.add_argument("--layer-kib", type=int, default=64, help="size of each layer")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s runs, 6 s of latency (under 2 min)")
    parser.add_argument("--tmp-dir", default=None, help="where the stacks keep their data")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.ab_seconds, args.seconds = 2, 3.0, 6.0
    if min(args.rounds, args.ab_seconds, args.seconds, args.rate, args.connections, args.pushers, args.layers,
           args.layer_kib) <= 0:
        parser.error("every count, size, rate and duration must be positive")
    if args.ab_seconds < 1:
        parser.error("--ab-seconds must be at least 1 (wrk counts whole seconds)")
    exit_on_sigterm()
    load_before = os.getloadavg()[0]
    with receiver() as hook, tempfile.TemporaryDirectory(prefix="wharf-events-bench-", dir=args.tmp_dir) as tmp, \
            ExitStack() as running:
        args.many_clients_lua = Path(tmp) / "many-clients.lua"
        args.many_clients_lua.write_text(MANY_CLIENTS_LUA)
        log(f"receiver at {hook.url} (pid {hook.pid}); starting three stacks (off, on, nopull)...")
        stacks = start_stacks(running, Path(tmp), hook, ("off", "on", "nopull"))
        layer = os.urandom(4096)
        for stack in stacks.values():
            client = Client(stack.server.url)
            try:
                push_image(client, GET_REPOSITORY, GET_TAG, layer)
            finally:
                client.close()
            warm = 1 if args.quick else 2
            pushes(stack.server.url, args.pushers, warm, args.layer_kib * 1024, args.layers, "warm")
            wrk_get(f"{stack.server.url}/v2/{GET_REPOSITORY}/manifests/{GET_TAG}", warm, args.many_clients_lua)
            stack.drain()
            if stack.hook_path:
                hook.take(stack.hook_path)
        runs = ab_rounds(stacks, hook, args)
        latency = {mode: latency_run(stacks[mode], hook, args) for mode in ("off", "on")}
        log_lines = {mode: stack.warnings() for mode, stack in stacks.items()}
        for stack in stacks.values():
            if stack.redis is not None:
                stack.redis.close()
    load_note = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    summary = print_report(runs, latency, args, load_note, log_lines)
    if args.json:
        print(json.dumps({"summary": summary, "runs": [{"kind": k, "mode": m, **{key: value for key, value in r.items()
                                                                                   if key != "pull_latency"}}
                                                        for k, m, r in runs]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    run_main(main)
