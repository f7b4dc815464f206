"""An HTTP proxy in front of a registry that can damage blob answers: flip one byte, or cut the
connection part-way. For mirror tests: what a mirror stores and serves must survive both."""

from __future__ import annotations

import http.server
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator

import requests

PASS, FLIP, CUT = "pass", "flip", "cut"


class TamperProxy:
    """``mode`` applies to GETs of blobs (``/blobs/sha256:...``); everything else passes."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = PASS
        self.blob_gets = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                answer = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                          stream=True, allow_redirects=False, timeout=60)
                is_blob = self.command == "GET" and "/blobs/sha256:" in urllib.parse.urlsplit(self.path).path
                mode = proxy.mode if is_blob and answer.status_code == 200 else PASS
                if is_blob:
                    proxy.blob_gets += 1
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("connection", "transfer-encoding", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                sent = 0
                for chunk in _chunks(answer):
                    if mode == FLIP and sent <= 1000 < sent + len(chunk):
                        at = 1000 - sent
                        chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1:]
                    if mode == CUT and sent + len(chunk) > 4096:
                        self.wfile.write(chunk[: 4096 - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)
                self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _chunks(answer: requests.Response) -> Iterator[bytes]:
    yield from answer.raw.stream(64 * 1024, decode_content=False)
