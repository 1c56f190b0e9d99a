"""The small state (SMS budget, reply routes, outbox, ...) in one SQLite file.

``<[state] directory>/state.sqlite3`` holds one table, ``state(tbl, key, value)``: a JSON value
under a key, in a named table (``quota``, ``routes``, ``outbox``, ...).  The whole state is
small, so :meth:`SQLiteStateStore.open` reads all of it once, synchronously, before the reactor
runs; afterwards :meth:`load` answers from that copy (kept current by ``put``/``delete``: one
process per database, held by a lock file) and every write goes to one writer thread, batched:
the writes queued while one transaction commits share the next one.  WAL, ``synchronous=FULL``:
the budget is about money and writes are rare (a few per SMS), so an fsync per batch costs
nothing anyone waits for.  No SQLite call runs on the reactor thread once it runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mup.store import StoreClosed, StoreError, StoreOpenError
from mup.store.lockfile import try_lock

__all__ = ["FILENAME", "SCHEMA", "SQLiteStateStore"]

log = Logger()

FILENAME = "state.sqlite3"

MIGRATIONS = [
    # 0 -> 1: one generic table of JSON values.
    "CREATE TABLE state (tbl TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
    " PRIMARY KEY (tbl, key)) WITHOUT ROWID",
]
"""``MIGRATIONS[n]`` takes a database from schema ``n`` (``PRAGMA user_version``) to ``n + 1``."""

SCHEMA = len(MIGRATIONS)

_PUT = ("INSERT INTO state (tbl, key, value) VALUES (?, ?, ?)"
        " ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value")
_DELETE = "DELETE FROM state WHERE tbl = ? AND key = ?"

_Op = tuple[str, str, "str | None"]
"""A queued write: table, key, JSON value (None deletes)."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _reason(e: sqlite3.Error) -> str:
    text = str(e) or type(e).__name__
    if "not a database" in text or "malformed" in text:
        return f"not an SQLite database, or damaged ({text})"
    if "readonly" in text or "read-only" in text:
        return "not writable (read-only)"
    return text


class SQLiteStateStore:
    """A :class:`mup.store.StateStore` on SQLite.  Build it with :meth:`open`."""

    def __init__(self, path: str, reactor: Any, threaded: bool,
                 tables: dict[str, dict[str, Any]], lock_fd: int) -> None:
        self.path = path
        self._reactor = reactor
        self._threaded = threaded
        self._tables = tables
        self._lock_fd = lock_fd
        self._conn: sqlite3.Connection | None = None
        """The writer's connection, opened by (and only used in) the writer thread."""
        self._queue: list[tuple[_Op, defer.Deferred[None]]] = []
        self._busy = False
        self._call: IDelayedCall | None = None
        self._closed = False
        self._closing: defer.Deferred[None] | None = None
        self._finishing = False
        self._pool: ThreadPool | None = None
        if threaded:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="mup-state")
            # Not before the reactor runs: a start-up that fails after open() must not be kept
            # alive by this (non-daemon) thread.  Writes queue until then.
            reactor.callWhenRunning(self._pool.start)
            reactor.addSystemEventTrigger("during", "shutdown", self.close)

    @classmethod
    def open(cls, directory: str, reactor: Any = None, *, threaded: bool | None = None
             ) -> SQLiteStateStore:
        """Open (creating, migrating) ``<directory>/state.sqlite3`` and read every table.

        Synchronous: call it while building the service, before the reactor runs.  Raises
        StoreOpenError (one line naming the path) when the directory or file cannot be used.
        With a reactor that runs no threads (``task.Clock``) or ``threaded=False``, writes run
        on the calling thread at the next turn (tests)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if threaded is None:
            threaded = IReactorThreads.providedBy(reactor)
        path = os.path.join(directory, FILENAME)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreOpenError(f"state directory {directory} cannot be created: "
                                 f"{e.strerror or e}") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreOpenError(f"state directory {directory} is not writable "
                                 f"(owner, mode or a read-only mount)")
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            raise StoreOpenError(f"{path}: not readable and writable by this user")
        lock_fd = _lock(path)
        try:
            tables = _open(path)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, reactor, threaded, tables, lock_fd)

    # -- the StateStore interface -------------------------------------------------------------

    def load(self, table: str) -> defer.Deferred[dict[str, Any]]:
        """Every key and value of ``table``, as read at open and written since."""
        return defer.succeed(dict(self._tables.get(table, {})))

    def put(self, table: str, key: str, value: Any) -> defer.Deferred[None]:
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            return defer.fail(StoreError(f"{table}/{key}: not JSON-able: {e}"))
        if self._closed:
            return defer.fail(StoreClosed(f"{self.path} is closed"))
        self._tables.setdefault(table, {})[key] = json.loads(text)
        return self._enqueue((table, key, text))

    def delete(self, table: str, key: str) -> defer.Deferred[None]:
        if self._closed:
            return defer.fail(StoreClosed(f"{self.path} is closed"))
        self._tables.get(table, {}).pop(key, None)
        return self._enqueue((table, key, None))

    def close(self) -> defer.Deferred[None]:
        """Commit what is queued, close the database and release the lock."""
        if self._closing is None:
            self._closed = True
            self._closing = defer.Deferred()
            self._maybe_finish()
        # A fresh Deferred per caller, so one caller's callbacks do not change another's result.
        d: defer.Deferred[None] = defer.Deferred()
        def tell(result: object) -> object:
            d.callback(None)
            return result

        self._closing.addBoth(tell)
        return d

    # -- the writer ---------------------------------------------------------------------------

    def _enqueue(self, op: _Op) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._queue.append((op, d))
        if self._call is None and not self._busy:
            self._call = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._call = None
        if self._busy or not self._queue:
            self._maybe_finish()
            return
        batch, self._queue = self._queue, []
        self._busy = True
        self._run(self._write, [op for op, _ in batch]).addBoth(self._written, batch)

    def _written(self, result: Any, batch: list[tuple[_Op, defer.Deferred[None]]]) -> None:
        self._busy = False
        for _, d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
        if self._queue:
            self._flush()
        else:
            self._maybe_finish()

    def _write(self, ops: list[_Op]) -> None:
        """In the writer thread: one transaction for the batch."""
        try:
            if self._conn is None:
                self._conn = _connect(self.path)
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table, key, value in ops:
                    if value is None:
                        conn.execute(_DELETE, (table, key))
                    else:
                        conn.execute(_PUT, (table, key, value))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self._disconnect()
            raise StoreError(f"{self.path}: cannot write: {_reason(e)}") from None

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _run(self, job: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        if self._pool is not None:
            return threads.deferToThreadPool(self._reactor, self._pool, job, *args)
        return defer.maybeDeferred(job, *args)

    def _maybe_finish(self) -> None:
        """Once closing and nothing is queued or in flight: close the connection (in the
        writer thread), stop the thread, release the lock."""
        if (self._closing is None or self._finishing or self._busy or self._queue
                or self._call is not None):
            return
        self._finishing = True
        self._run(self._disconnect).addBoth(self._finished)

    def _finished(self, result: Any) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        os.close(self._lock_fd)
        if isinstance(result, Failure):
            log.failure("closing {path}", result, path=self.path)
        assert self._closing is not None
        self._closing.callback(None)


def _open(path: str) -> dict[str, dict[str, Any]]:
    """Open ``path`` on the calling thread: check, migrate, read every row, close."""
    try:
        conn = _connect(path)
    except sqlite3.Error as e:
        raise StoreOpenError(f"{path}: {_reason(e)}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA:
            raise StoreOpenError(f"{path}: schema version {version} is newer than this mup "
                                 f"knows ({SCHEMA}); run the newer mup or restore a backup")
        for n in range(version, SCHEMA):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(MIGRATIONS[n])
            conn.execute(f"PRAGMA user_version = {n + 1}")
            conn.execute("COMMIT")
            if n:
                log.info("{path}: schema migrated to version {version}", path=path,
                         version=n + 1)
        tables: dict[str, dict[str, Any]] = {}
        for table, key, value in conn.execute("SELECT tbl, key, value FROM state"):
            try:
                tables.setdefault(table, {})[key] = json.loads(value)
            except ValueError:
                log.warn("{path}: {table}/{key} is not JSON; ignored", path=path, table=table,
                         key=key)
        return tables
    except sqlite3.Error as e:
        raise StoreOpenError(f"{path}: {_reason(e)}") from None
    finally:
        conn.close()


def _lock(path: str) -> int:
    """Hold ``path.lock`` (:mod:`mup.store.lockfile`) so one process uses the database."""
    lock_path = path + ".lock"
    try:
        fd = try_lock(lock_path)
    except OSError as e:
        raise StoreOpenError(f"{lock_path}: {e.strerror or e}") from None
    if fd is None:
        raise StoreOpenError(f"{path} is in use by another mup process")
    return fd
