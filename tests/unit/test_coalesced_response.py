"""worker.CoalescedResponse: a small answer's head leaves with its body in one send; a large
body, a file, a chunked body and a body-less answer still get their head first, exactly once,
and what reaches the client is byte for byte what gunicorn's own response sends."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import FileWrapper, Response

from services.api.worker import COALESCED_BODY, CoalescedResponse


class _Recorder:
    """A socket that keeps every send: the test counts sends and compares bytes."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def send(self, data: bytes) -> int:
        self.sends.append(bytes(data))
        return len(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        file.seek(offset)
        data = file.read(count)
        self.sends.append(data)
        return len(data)


def _request(method: str = "GET", version: str = "1.1") -> Any:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(f"{method} /v2/a/manifests/b HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        return next(RequestParser(Config(), ours, ("127.0.0.1", 1)))
    finally:
        ours.close()
        theirs.close()


def _answer(kind: type[Response], method: str, headers: list[tuple[str, str]], body: list[bytes] | None,
            version: str = "1.1", status: str = "200 OK", file: Path | None = None) -> _Recorder:
    sock = _Recorder()
    response = kind(_request(method, version), sock, Config())
    response.start_response(status, headers)
    if file is not None:
        with file.open("rb") as handle:
            assert response.sendfile(FileWrapper(handle))
    for piece in body or []:
        response.write(piece)
    response.close()
    return sock


def _normalised(data: bytes) -> bytes:
    """The bytes with the Date header's value blanked (it may tick between two answers)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = [b"Date: -" if line.startswith(b"Date: ") else line for line in head.split(b"\r\n")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


CASES = {
    "small body": ("GET", [("Content-Type", "application/json"), ("Content-Length", "13")], [b'{"errors":[]}'], 1),
    "empty body": ("PUT", [("Content-Length", "0"), ("Location", "/v2/a/blobs/sha256:0")], [], 1),
    "HEAD": ("HEAD", [("Content-Length", "5")], [], 1),
    "body over the coalescing size": ("GET", [("Content-Length", str(COALESCED_BODY + 1))],
                                      [b"x" * (COALESCED_BODY + 1)], 2),
    "several pieces": ("GET", [("Content-Length", "6")], [b"ab", b"cd", b"ef"], 3),
    "chunked": ("GET", [("Content-Type", "text/plain")], [b"abc", b"def"], 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_head_leaves_with_the_first_small_piece_and_the_bytes_are_gunicorns(case: str) -> None:
    method, headers, body, sends = CASES[case]
    ours = _answer(CoalescedResponse, method, headers, body)
    theirs = _answer(Response, method, headers, body)
    assert _normalised(b"".join(ours.sends)) == _normalised(b"".join(theirs.sends))
    assert len(ours.sends) == sends
    assert ours.sends[0].startswith(b"HTTP/1.1 ")


def test_a_file_answer_sends_its_head_first_and_once(tmp_path: Path) -> None:
    data = b"layer bytes" * 100
    (tmp_path / "blob").write_bytes(data)
    ours = _answer(CoalescedResponse, "GET", [("Content-Length", str(len(data)))], None, file=tmp_path / "blob")
    theirs = _answer(Response, "GET", [("Content-Length", str(len(data)))], None, file=tmp_path / "blob")
    assert _normalised(b"".join(ours.sends)) == _normalised(b"".join(theirs.sends))
    assert ours.sends[0].endswith(b"\r\n\r\n") and ours.sends[1] == data


def test_a_head_committed_to_and_then_abandoned_is_never_sent() -> None:
    """gunicorn reads headers_sent to decide whether an error may still get its own answer: once
    committed, it closes the connection instead, and the kept head must not leak out later."""
    sock = _Recorder()
    response = CoalescedResponse(_request(), sock, Config())
    response.start_response("200 OK", [("Content-Length", "4")])
    response.send_headers()
    assert response.headers_sent
    assert sock.sends == []
