"""Progress bars on a terminal (rich), silence everywhere else.

Bars go to stderr so stdout stays clean for ``--json`` and ``--raw``; they are
shown only when stderr is a terminal, because progress redraws in a CI log or a
pipe are noise.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from wharf_client.manifest import Descriptor
from wharf_client.upload import Outcome

_DONE = {Outcome.UPLOADED: "done", Outcome.EXISTS: "already there", Outcome.MOUNTED: "mounted"}


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class BlobBars:
    """One bar per blob, implementing the copy engine's progress callbacks; a no-op when disabled."""

    def __init__(self, enabled: bool, verb: str = "copy") -> None:
        self.enabled = enabled
        self.verb = verb
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> BlobBars:
        if self.enabled:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def blob_started(self, descriptor: Descriptor) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._tasks[descriptor.digest] = self._progress.add_task(
                f"{short(descriptor.digest)} {self.verb}", total=descriptor.size)

    def blob_advanced(self, descriptor: Descriptor, done: int) -> None:
        if self._progress is not None and descriptor.digest in self._tasks:
            self._progress.update(self._tasks[descriptor.digest], completed=done)

    def blob_finished(self, descriptor: Descriptor, outcome: Outcome) -> None:
        if self._progress is not None and descriptor.digest in self._tasks:
            self._progress.update(self._tasks[descriptor.digest], completed=descriptor.size,
                                  description=f"{short(descriptor.digest)} {_DONE[outcome]}")

    def single(self, label: str, total: int) -> ByteBar:
        """A bar for one transfer outside the copy engine (blob get/put, artifact files)."""
        return ByteBar(self._progress, label, total)


class ByteBar:
    def __init__(self, progress: Progress | None, label: str, total: int) -> None:
        self._progress = progress
        self._task = progress.add_task(label, total=total) if progress is not None else None

    def __call__(self, done: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done)
