"""A throttling TCP proxy that makes a registry on loopback look remote, and counts what it carries.

Each connection waits ``latency`` seconds before it reaches the upstream and again before each
request it forwards (a request is a read that starts with an HTTP request line); answers go back
at most ``rate`` bytes/s per connection (a token bucket of ``BURST`` bytes, so an idle keep-alive
connection saves up no more than that). Counters: connections, requests, blob GETs (request lines
``GET .../blobs/...``), bytes towards the client (``bytes_down``: what was fetched from the
upstream) and towards the upstream.

It runs in a forked process of its own: in the benchmark's process it would share the GIL with
the clients being timed. The counters live in shared memory, written only by that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import re
import signal
import urllib.parse
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from common import BenchError, signals_held

PIECE = 256 * 1024
BURST = 256 * 1024
STREAM_LIMIT = 1 << 20
FIELDS = ("connections", "requests", "blob_gets", "bytes_down", "bytes_up")
CONNECTIONS, REQUESTS, BLOB_GETS, BYTES_DOWN, BYTES_UP = range(len(FIELDS))
_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r\n")


@dataclasses.dataclass
class Throttle:
    url: str
    counters: Any  # a multiprocessing RawArray of FIELDS

    def snapshot(self) -> dict[str, int]:
        return dict(zip(FIELDS, self.counters[:], strict=True))


def since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in FIELDS}


@contextlib.contextmanager
def throttled(upstream_url: str, rate: float, latency: float) -> Iterator[Throttle]:
    """A proxy to ``upstream_url`` (``http://host:port``) at ``rate`` bytes/s per connection and
    ``latency`` seconds per connection and per request; stopped when the ``with`` block ends."""
    parts = urllib.parse.urlsplit(upstream_url)
    context = multiprocessing.get_context("fork")
    counters = context.RawArray("q", len(FIELDS))
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_serve, name="throttling-proxy", daemon=True,
                              args=(parts.hostname, parts.port, rate, latency, counters, send))
    with signals_held() as release:
        process.start()
        send.close()
        try:
            release()
            if not receive.poll(30):
                raise BenchError("the throttling proxy did not start")
            yield Throttle(f"http://127.0.0.1:{receive.recv()}", counters)
        finally:
            with signals_held():
                receive.close()
                process.terminate()
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()


# -- the proxy process ------------------------------------------------------------------------

def _serve(host: str, port: int, rate: float, latency: float, counters: Any, ready: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    asyncio.run(_listen(host, port, rate, latency, counters, ready))


async def _listen(host: str, port: int, rate: float, latency: float, counters: Any, ready: Connection) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counters[CONNECTIONS] += 1
        upstream_writer = None
        try:
            await asyncio.sleep(latency)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
            pumps = [asyncio.create_task(_requests(reader, upstream_writer, latency, counters)),
                     asyncio.create_task(_answers(upstream_reader, writer, rate, counters))]
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:  # one side ended: HTTP/1.1 has no use for the other half
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass
        finally:
            for end in (writer, upstream_writer):
                if end is not None:
                    end.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, limit=STREAM_LIMIT)
    ready.send(server.sockets[0].getsockname()[1])
    ready.close()
    async with server:
        await server.serve_forever()


async def _requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float,
                    counters: Any) -> None:
    while data := await reader.read(PIECE):
        line = _REQUEST_LINE.match(data)
        if line:
            counters[REQUESTS] += 1
            if line.group(1) == b"GET" and b"/blobs/" in line.group(2):
                counters[BLOB_GETS] += 1
            await asyncio.sleep(latency)
        counters[BYTES_UP] += len(data)
        writer.write(data)
        await writer.drain()


async def _answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float, counters: Any) -> None:
    loop = asyncio.get_running_loop()
    clock = loop.time()  # when the bytes sent so far may have left at ``rate``
    while data := await reader.read(PIECE):
        now = loop.time()
        clock = max(clock, now - BURST / rate) + len(data) / rate
        writer.write(data)
        counters[BYTES_DOWN] += len(data)
        await writer.drain()
        delay = clock - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
