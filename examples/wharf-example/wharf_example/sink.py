"""``jsonl-file``: appends each event, in Distribution's format, as one JSON line to a file.

    endpoints:
      - name: audit
        sink: jsonl-file
        options: {path: /var/log/wharf-events.jsonl}
"""

from __future__ import annotations

import json
import os
import pathlib

from services.events.config import Endpoint
from services.events.envelope import Event, Source, distribution_event
from services.events.sinks import INTERFACE, EventSink


class JsonLinesSink(EventSink):
    wharf_interface = INTERFACE

    def __init__(self, path: pathlib.Path, source: Source) -> None:
        self._path = path
        self._source = source

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, source: Source) -> JsonLinesSink:
        path = endpoint.options.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"endpoint {endpoint.name}: jsonl-file needs path: an absolute file path in options")
        return cls(pathlib.Path(path), source)

    def send(self, events: list[Event]) -> str:
        lines = "".join(json.dumps(distribution_event(e, self._source)) + "\n" for e in events)
        try:
            with open(self._path, "a", encoding="utf-8") as out:
                out.write(lines)
                out.flush()
                os.fsync(out.fileno())  # taken means on disk: the cursor moves past these next
        except OSError as exc:
            return f"cannot append to {self._path}: {exc.strerror}"
        return ""
