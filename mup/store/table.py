"""One table of a StateStore as its user sees it: loaded once, written behind.

The users (quota, reply routes, outbox) keep their state in memory and call ``put``/``delete``
without waiting; a write that fails (disk full) is logged once and sent again with the next
write or :meth:`StateTable.retry`, so the table catches up by itself.  Also here: importing a
state file of the format before SQLite, and the service that closes the store at shutdown.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup.store import StateStore

__all__ = ["ClosingService", "StateTable", "read_json_lines"]

log = Logger()

_ABSENT = object()


class StateTable:
    """``table`` of ``store``; ``what`` names it in log lines ("SMS quota")."""

    def __init__(self, store: StateStore, table: str, what: str) -> None:
        self.store = store
        self.table = table
        self.what = what
        self._gen = 0
        self._latest: dict[str, int] = {}
        """Keys with a write in flight: the generation of the latest."""
        self._failed: dict[str, Any] = {}
        """Keys whose latest write failed: the value to write again (_ABSENT: delete), kept
        until a later write of the key commits."""
        self._reported = False

    def load(self) -> defer.Deferred[dict[str, Any]]:
        return self.store.load(self.table)

    @property
    def failing(self) -> bool:
        """True while some write failed and has not been made good since."""
        return bool(self._failed)

    def put(self, key: str, value: Any) -> defer.Deferred[bool]:
        """Write ``value`` under ``key`` behind the caller's back; fires True once committed,
        False if it failed (logged; written again with the next write)."""
        return self._write(key, value)

    def delete(self, key: str) -> defer.Deferred[bool]:
        return self._write(key, _ABSENT)

    def retry(self) -> None:
        """Write again what failed (keys with no write in flight)."""
        self._retry()

    def _retry(self, skip: str | None = None) -> None:
        for key, value in list(self._failed.items()):
            if key != skip and key not in self._latest:
                self._issue(key, value)

    def _write(self, key: str, value: Any) -> defer.Deferred[bool]:
        self._retry(skip=key)  # ``key`` itself is written anew
        return self._issue(key, value)

    def _issue(self, key: str, value: Any) -> defer.Deferred[bool]:
        self._gen += 1
        gen = self._latest[key] = self._gen
        if value is _ABSENT:
            d = self.store.delete(self.table, key)
        else:
            d = self.store.put(self.table, key, value)
        return d.addCallbacks(self._done, self._fail, callbackArgs=(key, gen),
                              errbackArgs=(key, gen, value))

    def _done(self, _: Any, key: str, gen: int) -> bool:
        if self._latest.get(key) == gen:
            del self._latest[key]
            self._failed.pop(key, None)
        if self._reported and not self._failed:
            self._reported = False
            log.info("{what} state is written again", what=self.what)
        return True

    def _fail(self, failure: Failure, key: str, gen: int, value: Any) -> bool:
        if self._latest.get(key) == gen:
            del self._latest[key]
            self._failed[key] = value
        if not self._reported:
            self._reported = True
            log.error("{what} state cannot be written: {error}", what=self.what,
                      error=failure.getErrorMessage())
        return False


class ClosingService(Service):
    """Closes the store when the application stops (after the services started later)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - Twisted's name
        super().stopService()  # type: ignore[no-untyped-call]
        return self.store.close()


# -- importing the files of the format before SQLite ------------------------------------------


def read_json_lines(path: str) -> list[dict[str, Any]]:
    """The records of an old JSON-lines state file; a torn or unreadable line is skipped (as the
    old reader did).  Raises OSError if it exists and cannot be read."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except ValueError:
                log.warn("{path}:{line}: unreadable record skipped", path=path, line=number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def import_file(table: StateTable, path: str, read: Callable[[str], dict[str, Any]],
                apply: Callable[[dict[str, Any]], None]) -> None:
    """If ``path`` (a state file of the old format) exists: ``read`` it into rows, ``apply``
    them to the user's memory, write them to ``table`` and, once all are committed, rename the
    file ``<path>.imported`` and say so in one line.  A file that cannot be read is left where
    it is (logged); one whose rows could not be written is imported again at the next start.

    Runs once at start-up, before the reactor runs for SQLiteStateStore: the file is small."""
    if not os.path.exists(path):
        return
    try:
        rows = read(path)
    except (OSError, ValueError) as e:
        log.error("{path} cannot be imported ({error}); left in place", path=path, error=e)
        return
    apply(rows)
    writes = [table.put(key, value) for key, value in rows.items()]

    def written(results: list[bool]) -> None:
        if not all(results):
            log.error("{path}: not all of it could be written; it stays, to be imported again "
                      "at the next start", path=path)
            return
        try:
            os.replace(path, path + ".imported")
        except OSError as e:
            log.error("{path} was imported but cannot be moved aside: {error}", path=path,
                      error=e)
            return
        log.info("imported {count} rows of {what} from {path} (moved to {path}.imported)",
                 count=len(rows), what=table.what, path=path)

    defer.gatherResults(writes).addCallback(written)
