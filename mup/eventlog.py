"""A small append-only JSON-lines file: the SMS budget and outbox state, cheap to keep current.

Appending a line costs microseconds where rewriting a file (temporary file, rename) costs
milliseconds on the sending path.  A torn last line (a crash mid-write) is skipped on reading;
``compact`` rewrites the file atomically with only the records still needed.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable

from twisted.logger import Logger

__all__ = ["EventLog"]

log = Logger()


class EventLog:
    """``path`` as JSON lines.  Each append is flushed to the OS at once (a crash of the process
    loses nothing); with a ``clock``, an fsync follows within ``sync_delay`` seconds, one for
    all the appends in between, so the sending path does not wait for the disk (and, when
    the clock is a reactor with threads, neither does anything else)."""

    def __init__(self, path: str, clock: Any = None, sync_delay: float = 0.05) -> None:
        self.path = path
        self._clock = clock
        self.sync_delay = sync_delay
        self._sync_call: Any = None
        self.lines = 0
        """Lines in the file (a damaged file counts more): callers compact when it has more
        than they keep."""
        self._file: Any = None

    def read(self) -> list[dict[str, Any]]:
        """Every readable record; raises OSError if the file exists but cannot be read."""
        records = []
        raw = 0
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    raw += 1 if line.endswith("\n") else 2  # a torn end forces a compaction
                    try:
                        record = json.loads(line)
                    except ValueError:
                        log.warn("{path}:{line}: unreadable record skipped", path=self.path,
                                 line=number)
                        continue
                    if isinstance(record, dict):
                        records.append(record)
        except FileNotFoundError:
            pass
        self.lines = raw
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if self._clock is not None and self._sync_call is None:
            self._sync_call = self._clock.callLater(self.sync_delay, self._sync_soon)
        self.lines += 1

    def _sync_soon(self) -> None:
        """The timed fsync: in a thread of the reactor's pool where there is one (an fsync
        blocks for milliseconds, and the reactor would answer nobody meanwhile), on a
        duplicate of the file descriptor so that closing the file cannot race it."""
        self._sync_call = None
        call_in_thread = getattr(self._clock, "callInThread", None)
        if self._file is None or call_in_thread is None:
            self.sync()
            return
        try:
            fd = os.dup(self._file.fileno())
        except OSError:
            self.sync()
            return
        call_in_thread(_fsync_and_close, fd, self.path)

    def sync(self) -> None:
        """fsync what was appended (called by the clock; call it before stopping)."""
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._sync_call = None
        if self._file is not None:
            os.fsync(self._file.fileno())

    def compact(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file with ``records``, atomically."""
        self.close()
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".compact.", dir=directory)
        count = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, separators=(",", ":")) + "\n")
                    count += 1
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self.lines = count

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


def _fsync_and_close(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        log.warn("{path}: fsync failed: {error}", path=path, error=e)
    finally:
        os.close(fd)
