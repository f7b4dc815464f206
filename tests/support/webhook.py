"""A real HTTP receiver for event deliveries, run as its own process (so stopping it is an outage).

It appends one JSON line per request it answered (arrival time, headers, raw body) to a file and
answers 200, after ``--delay`` seconds (a slow consumer, so that a test can kill the delivery service
while a delivery is in flight). The test reads the file; nothing here judges what arrived.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from services.common.health import http_ok
from services.stack.processes import free_port


class Receiver:
    """Starts and stops the receiver process on one port; reads what it got."""

    def __init__(self, directory: pathlib.Path, delay: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.record = directory / f"webhook-{self.port}.jsonl"
        self.delay = delay
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Receiver:
        argv = [sys.executable, "-m", "tests.support.webhook", str(self.port), str(self.record),
                "--delay", str(self.delay)]
        self.process = subprocess.Popen(argv, start_new_session=True)
        deadline = time.monotonic() + 15
        while not http_ok(f"http://127.0.0.1:{self.port}/ready"):
            assert time.monotonic() < deadline and self.process.poll() is None, "the webhook receiver did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def deliveries(self) -> list[dict[str, Any]]:
        """Every request answered so far: {"at", "headers", "body" (bytes)}, in arrival order."""
        if not self.record.exists():
            return []
        found = []
        text = self.record.read_text()
        # Only whole lines: the receiver may be writing the last one (a long line leaves in more
        # than one write), and a half-written line is a delivery not yet answered.
        for line in text[:text.rfind("\n") + 1].splitlines():
            entry = json.loads(line)
            entry["body"] = base64.b64decode(entry["body"])
            found.append(entry)
        return found

    def events(self) -> list[dict[str, Any]]:
        """Every event received (Distribution's envelope), in arrival order."""
        return [event for d in self.deliveries() for event in json.loads(d["body"])["events"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("record")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(args.delay)
            with lock, open(args.record, "a") as out:
                out.write(json.dumps({"at": time.time(), "headers": dict(self.headers),
                                      "body": base64.b64encode(body).decode()}) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
