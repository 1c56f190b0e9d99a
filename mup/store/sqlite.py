"""The inbound message store in one SQLite file: ``<journal directory>/inbound.sqlite3``.

Two tables hold it all: ``messages`` (accepted, not yet delivered; ``seq`` is the AUTOINCREMENT
rowid, so it never goes back) and ``seen`` (keys of delivered messages, kept for the dedupe
window).  WAL and ``synchronous=FULL``: a commit is on disk when it returns.

Writes go through one writer thread that commits whatever queued up while the previous commit ran
(group commit): a batch goes to it through a queue and its results come back in one
``callFromThread``, as this is on every post's path; reads go through a reader thread and
connection of their own, so the reactor never waits on SQLite. A reactor that cannot run threads
(``task.Clock`` in tests) gets the same work done inline. The database is opened (checked,
migrated, an old journal imported) before the reactor runs; the threads open their own connections
once it does, so a twistd that forks into the background carries no SQLite connection across the
fork.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mup.store import Backlog, Entry, StoreClosed, StoreError, StoreOpenError
from mup.store.lockfile import try_lock

__all__ = ["DATABASE", "SCHEMA", "SQLiteMessageStore", "connect"]

log = Logger(namespace="mup.store")

DATABASE = "inbound.sqlite3"
LOCK = "inbound.lock"
SCHEMA = 1
"""The schema this code writes; ``PRAGMA user_version`` holds the database's."""
MAX_KEY = 1024
MAX_BATCH = 4096
"""The writer stops adding what waits in its inbox to a transaction at this many writes."""
MAX_RECORD = 1 << 20
HOUSEKEEPING = 60.0
"""Seconds between deleting expired dedupe keys and returning free pages to the disk."""
PROBE = 1.0
"""Seconds between attempts to write again after a failed commit."""

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


_APPEND = (
    "INSERT INTO messages (key, appended, record) "
    "SELECT json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), "
    "json_extract(j.value, '$[2]') FROM json_each(?1) AS j "
    "WHERE NOT EXISTS (SELECT 1 FROM messages WHERE key = json_extract(j.value, '$[0]')) "
    "AND NOT EXISTS (SELECT 1 FROM seen WHERE key = json_extract(j.value, '$[0]') "
    "AND appended >= json_extract(j.value, '$[1]') - ?2) ORDER BY j.key")
"""A run of appends (distinct keys) in one statement, in order: each is new unless pending, or
delivered within the dedupe window.  Those are left out before the insert, so the new rows' seqs
are consecutive (AUTOINCREMENT, one writer).  One statement, as the writer thread gives up the
GIL in every SQLite call and waits to get it back from a busy reactor thread; alone in a batch it
is its own transaction (one call inserts and commits)."""


def _create(con: sqlite3.Connection) -> None:
    """Schema 0 -> 1: the first one."""
    for statement in (
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "key TEXT NOT NULL UNIQUE, appended REAL NOT NULL, record TEXT NOT NULL)",
            "CREATE TABLE seen (key TEXT PRIMARY KEY, appended REAL NOT NULL) WITHOUT ROWID",
            "CREATE INDEX seen_appended ON seen (appended)"):
        con.execute(statement)
    con.execute("INSERT INTO meta VALUES ('epoch', ?)", (secrets.token_hex(6),))


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create}
"""``MIGRATIONS[n]`` takes a database from schema ``n`` to ``n + 1``, inside one transaction."""


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, synchronous=FULL."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    con.execute("PRAGMA auto_vacuum=INCREMENTAL")   # takes only before the first table
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


# One lock per database per process (mup.store.lockfile); this process may open a store it has
# open (tests reopen to look inside).
_LOCKS: dict[str, list[int]] = {}


def _lock(directory: str) -> str:
    real = os.path.realpath(directory)
    held = _LOCKS.get(real)
    if held is not None:
        held[1] += 1
        return real
    path = os.path.join(real, LOCK)
    try:
        fd = try_lock(path)
    except OSError as e:
        raise StoreOpenError(f"{path}: cannot lock: {e.strerror}") from None
    if fd is None:
        try:
            with open(path) as f:
                holder = f.read().strip() or "?"
        except OSError:
            holder = "?"
        raise StoreOpenError(f"{os.path.join(real, DATABASE)} is in use by another process "
                             f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[real] = [fd, 1]
    return real


def _unlock(real: str) -> None:
    held = _LOCKS.get(real)
    if held is not None:
        held[1] -= 1
        if held[1] <= 0:
            del _LOCKS[real]
            os.close(held[0])


def _writable_directory(directory: str) -> None:
    """Create ``directory`` if need be, and check that files can be made in it."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)   # SMS are private
    except OSError as e:
        raise StoreOpenError(f"{directory}: cannot create the journal directory: "
                             f"{e.strerror}") from None
    probe = os.path.join(directory, f".write-test-{os.getpid()}")
    try:   # os.access says yes to root on a read-only mount
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise StoreOpenError(f"{directory}: the journal directory is not writable: "
                             f"{e.strerror}") from None


def _prepare(path: str) -> str:
    """Create or migrate the database at ``path``; its epoch."""
    try:
        con = connect(path)
        try:
            return _migrate(con, path)
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StoreOpenError(f"{path}: {_describe(e)}") from None


def _describe(e: sqlite3.Error) -> str:
    text = str(e)
    if "not a database" in text or "malformed" in text:
        return f"not a mup database, or damaged ({text})"
    return text


def _migrate(con: sqlite3.Connection, path: str) -> str:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA:
        raise StoreOpenError(f"{path}: schema version {version} is newer than this mup knows "
                             f"({SCHEMA}); run the newer mup, or restore a backup")
    if version < SCHEMA:
        con.execute("BEGIN IMMEDIATE")
        try:
            for v in range(version, SCHEMA):
                MIGRATIONS[v](con)
            con.execute(f"PRAGMA user_version={SCHEMA}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if version > 0:
            log.info("{path}: schema migrated from version {old} to {new}", path=path,
                     old=version, new=SCHEMA)
    row = con.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
    if row is None:
        raise StoreOpenError(f"{path}: not a mup database (no epoch)")
    return str(row[0])


@dataclass(eq=False)
class _Op:
    kind: str               # "append", "done", "probe", "housekeep"
    d: defer.Deferred[Any] = field(default_factory=defer.Deferred)
    key: str = ""
    text: str = ""
    appended: float = 0.0
    seqs: tuple[int, ...] = ()


class SQLiteMessageStore:
    """The :class:`mup.store.MessageStore` on SQLite; see the module docstring."""

    epoch: str

    def __init__(self, directory: str, path: str, epoch: str, reactor: Any, *,
                 dedupe_window: float, threaded: bool, connector: Callable[[str], Any]) -> None:
        self.directory = directory
        self.path = path
        self.epoch = epoch
        self._reactor = reactor
        self._window = dedupe_window
        self._threaded = threaded
        self._connect = connector
        self._writer_con: Any = None
        self._reader_con: Any = None
        self._writer: threading.Thread | None = None
        self._inbox: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._reader: ThreadPool | None = None
        self._queue: list[_Op] = []
        self._in_flight = 0   # writes handed to the writer and not answered yet
        self._call: IDelayedCall | None = None
        self._failing = False
        self._closed = False
        self._locked: str | None = None
        self._subscribers: list[Callable[[], None]] = []
        self._timers: list[IDelayedCall] = []
        self._probe_call: IDelayedCall | None = None
        self._trigger: object = None   # the reactor's opaque shutdown trigger id

    @classmethod
    def open(cls, directory: str, reactor: Any = None, *, dedupe_window: float = 7 * 86400,
             threaded: bool | None = None, connector: Callable[[str], Any] = connect,
             import_legacy: bool = True) -> SQLiteMessageStore:
        """Open (creating, migrating or importing an old journal as needed) the store in
        ``directory``; raises :class:`StoreOpenError` with one line naming the path.

        Runs before the reactor does; ``reactor`` is also the clock.  ``connector`` opens a
        connection (tests pass one that fails as a full disk does)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if threaded is None:
            threaded = IReactorThreads.providedBy(reactor)
        directory = os.path.abspath(directory)
        _writable_directory(directory)
        locked = _lock(directory)
        path = os.path.join(directory, DATABASE)
        try:
            epoch = _prepare(path)
            if import_legacy:
                from mup.store.legacy import import_old_journal

                import_old_journal(directory, path, reactor.seconds(), dedupe_window)
        except BaseException:
            _unlock(locked)
            raise
        store = cls(directory, path, epoch, reactor, dedupe_window=dedupe_window,
                    threaded=threaded, connector=connector)
        store._locked = locked
        store._start()
        return store

    def _start(self) -> None:
        if self._threaded:
            # A daemon: a process that ends without closing the store is not held up by it
            # (an unfinished transaction is rolled back by SQLite; nothing was answered 2xx).
            self._writer = threading.Thread(target=self._writing, name="mup-store-writer",
                                            daemon=True)
            self._reader = ThreadPool(1, 1, name="mup-store-reader")
            # Not before the reactor runs: after twistd's fork, and a start-up that fails
            # later must not be kept alive by these threads.  Work queues until then.
            self._reactor.callWhenRunning(self._start_writer)
            self._reactor.callWhenRunning(self._reader.start)
            self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.close)
        self._timers.append(self._reactor.callLater(0, self.housekeep))

    def _start_writer(self) -> None:
        if not self._closed and self._writer is not None:
            self._writer.start()

    # -- the interface ------------------------------------------------------------------------

    def append(self, key: str, record: dict[str, Any]) -> defer.Deferred[Entry | None]:
        if self._closed:
            return defer.fail(StoreClosed("the store is closed"))
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            return defer.fail(ValueError(f"bad message key: {key!r:.80}"))
        if not isinstance(record, dict):
            return defer.fail(TypeError("a message record is a dict"))
        try:
            text = _ENCODE(record)
        except (TypeError, ValueError) as e:
            return defer.fail(TypeError(f"message record is not JSON: {e}"))
        if len(text) > MAX_RECORD:
            return defer.fail(ValueError(f"message record too large: {len(text)} characters"))
        return self._enqueue(_Op("append", key=key, text=text, appended=self._reactor.seconds()))

    def mark_done(self, seqs: Iterable[int]) -> defer.Deferred[None]:
        if self._closed:
            return defer.fail(StoreClosed("the store is closed"))
        seqs = tuple(int(s) for s in seqs)
        if not seqs:
            return defer.succeed(None)
        return self._enqueue(_Op("done", seqs=seqs))

    def pending(self, after: int = 0, limit: int | None = None) -> defer.Deferred[list[Entry]]:
        return self._read(self._pending_job, int(after), -1 if limit is None else max(0, limit))

    def lookup(self, keys: Iterable[str]) -> defer.Deferred[dict[str, int]]:
        return self._read(self._lookup_job, list(dict.fromkeys(keys)))

    def backlog(self) -> defer.Deferred[Backlog]:
        return self._read(self._backlog_job)

    def writable(self) -> bool:
        return not self._closed and not self._failing

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def housekeep(self) -> defer.Deferred[None]:
        """Delete expired dedupe keys and give free pages back (also every HOUSEKEEPING s)."""
        self._timers = [t for t in self._timers if t.active()]
        if self._closed:
            return defer.succeed(None)
        self._timers.append(self._reactor.callLater(HOUSEKEEPING, self.housekeep))
        d = self._enqueue(_Op("housekeep", appended=self._reactor.seconds() - self._window))
        d.addErrback(lambda f: log.error("{path}: housekeeping failed: {why}", path=self.path,
                                         why=f.getErrorMessage()))
        return d

    def close(self) -> defer.Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        for timer in [self._call, *self._timers]:
            if timer is not None and timer.active():
                timer.cancel()
        self._call, self._timers = None, []
        queue, self._queue = self._queue, []
        for op in queue:
            op.d.errback(Failure(StoreClosed("the store was closed before this was written")))
        if self._trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        if self._writer is not None and self._writer.ident is not None:
            self._inbox.put(None)   # after what is queued (a commit in progress)
            self._writer.join()
        else:
            self._close_connection("_writer_con")
        if self._reader is not None and self._reader.started:
            self._reader.callInThread(self._close_connection, "_reader_con")
            self._reader.stop()   # runs what is queued first
        else:
            self._close_connection("_reader_con")
        if self._locked is not None:
            _unlock(self._locked)
            self._locked = None
        return defer.succeed(None)

    def _close_connection(self, name: str) -> None:
        con = getattr(self, name)
        setattr(self, name, None)
        if con is not None:
            try:
                con.close()
            except sqlite3.Error:
                pass

    # -- writing ------------------------------------------------------------------------------

    def _enqueue(self, op: _Op) -> defer.Deferred[Any]:
        self._queue.append(op)
        self._next()
        return op.d

    def _flush(self) -> None:
        """Hand what this turn queued to the writer (which commits what is waiting at once)."""
        self._call = None
        if self._closed or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._in_flight += len(batch)
        if self._threaded:
            self._inbox.put(batch)
            return
        try:
            results = self._write(batch)
        except BaseException:
            self._write_failed(Failure(), batch)
        else:
            self._written(results, batch)

    def _writing(self) -> None:
        """The writer thread: commits in one transaction whatever the reactor put in the inbox
        while the last commit ran (group commit: it does not wait for the reactor to hand over
        more), and hands the results back in one call; ``None`` closes its connection and ends
        it, after what was put before."""
        call = self._reactor.callFromThread
        stop = False
        while not stop and (batch := self._inbox.get()) is not None:
            while len(batch) < MAX_BATCH:
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch = batch + more
            try:
                results = self._write(batch)
            except BaseException:
                call(self._write_failed, Failure(), batch)
            else:
                call(self._written, results, batch)
        self._close_connection("_writer_con")

    def _write(self, batch: list[_Op]) -> list[Any]:
        """On the writer thread: one transaction for the batch; each op's result."""
        if self._writer_con is None:
            self._writer_con = self._connect(self.path)
        con = self._writer_con
        out: list[Any] = []
        try:
            if all(op.kind == "append" for op in batch):
                # The common case, a batch of posts: one statement, committed as it ends.
                return self._append_run(con, batch)
            con.execute("BEGIN IMMEDIATE")
            run: list[_Op] = []
            for op in batch:
                if op.kind == "append":
                    run.append(op)
                    continue
                if run:
                    out.extend(self._append_run(con, run))
                    run = []
                out.append(getattr(self, "_do_" + op.kind)(con, op))
            if run:
                out.extend(self._append_run(con, run))
            con.execute("COMMIT")
            if any(op.kind == "housekeep" for op in batch):
                # Free pages go back to the file system.  Its own transaction: through
                # executescript, as the module would run this pragma one page per call.
                con.executescript("PRAGMA incremental_vacuum;")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if not con.in_transaction:
                raise
            self._writer_con = None   # a connection stuck in a transaction starts afresh
            try:
                con.close()
            except sqlite3.Error:
                pass
            raise
        return out

    def _append_run(self, con: sqlite3.Connection, run: list[_Op]) -> list[Entry | None]:
        """Insert ``run`` (appends, in order) with one statement; an entry for each new one,
        ``None`` for a duplicate.  The new rows' seqs are read back only when some of the run
        were duplicates."""
        first: dict[str, _Op] = {}
        for op in run:
            first.setdefault(op.key, op)       # a key twice in the run: the first one is new
        cur = con.execute(_APPEND, (_ENCODE([[op.key, op.appended, op.text]
                                             for op in first.values()]), self._window))
        added, last = cur.rowcount, cur.lastrowid
        seqs: dict[str, int] = {}
        if added == len(first) and last is not None:
            seqs = {key: last - added + 1 + i for i, key in enumerate(first)}
        elif added > 0 and last is not None:
            seqs = {key: seq for seq, key in con.execute(
                "SELECT seq, key FROM messages WHERE seq BETWEEN ? AND ?",
                (last - added + 1, last))}
        return [Entry(seq, op.key, json.loads(op.text), op.appended)
                if first[op.key] is op and (seq := seqs.get(op.key)) is not None else None
                for op in run]

    def _do_done(self, con: sqlite3.Connection, op: _Op) -> None:
        rows = [(s,) for s in op.seqs]
        con.executemany("INSERT OR REPLACE INTO seen (key, appended) "
                        "SELECT key, appended FROM messages WHERE seq = ?", rows)
        con.executemany("DELETE FROM messages WHERE seq = ?", rows)

    def _do_probe(self, con: sqlite3.Connection, op: _Op) -> None:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (repr(op.appended),))

    def _do_housekeep(self, con: sqlite3.Connection, op: _Op) -> None:
        con.execute("DELETE FROM seen WHERE appended < ?", (op.appended,))

    def _written(self, results: list[Any], batch: list[_Op]) -> None:
        self._in_flight -= len(batch)
        if self._failing:
            log.info("{path}: writing again", path=self.path)
        self._failing = False
        new = False
        for op, result in zip(batch, results, strict=True):
            new = new or (op.kind == "append" and result is not None)
            op.d.callback(result)
        if new:
            for callback in list(self._subscribers):
                try:
                    callback()
                except Exception:
                    log.failure("a store subscriber failed")

    def _write_failed(self, failure: Failure, batch: list[_Op]) -> None:
        self._in_flight -= len(batch)
        if not self._failing and not self._closed:
            log.error("{path}: cannot write ({why}); answering 503 until it can again",
                      path=self.path, why=failure.getErrorMessage())
        if not self._closed:
            self._failing = True
            if self._probe_call is None or not self._probe_call.active():
                self._probe_call = self._reactor.callLater(PROBE, self._probe)
                self._timers.append(self._probe_call)
        error = StoreError(f"{self.path}: {failure.getErrorMessage()}")
        for op in batch:
            op.d.errback(Failure(error))

    def _probe(self) -> None:
        """Not writable: try a small write now and then, as the receiver stops appending."""
        if self._failing and not self._closed and not self._in_flight and not self._queue:
            self._enqueue(_Op("probe", appended=self._reactor.seconds())).addErrback(
                lambda f: None)

    def _next(self) -> None:
        """Hand the queue over at the end of this reactor turn, so that the posts read in one
        turn go together."""
        if self._queue and not self._closed and self._call is None:
            self._call = self._reactor.callLater(0, self._flush)

    # -- reading ------------------------------------------------------------------------------

    def _read(self, job: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        if self._closed:
            return defer.fail(StoreClosed("the store is closed"))
        if self._threaded:
            assert self._reader is not None
            d = threads.deferToThreadPool(self._reactor, self._reader, self._reading, job, *args)
        else:
            d = defer.maybeDeferred(self._reading, job, *args)
        return d.addErrback(self._read_failed)

    def _reading(self, job: Callable[..., Any], *args: Any) -> Any:
        """On the reader thread (its connection is used nowhere else)."""
        if self._reader_con is None:
            self._reader_con = self._connect(self.path)
        try:
            return job(self._reader_con, *args)
        except sqlite3.Error:
            self._close_connection("_reader_con")   # the next read starts afresh
            raise

    def _read_failed(self, failure: Failure) -> Failure:
        failure.trap(sqlite3.Error)
        return Failure(StoreError(f"{self.path}: {failure.getErrorMessage()}"))

    @staticmethod
    def _pending_job(con: sqlite3.Connection, after: int, limit: int) -> list[Entry]:
        rows = con.execute("SELECT seq, key, appended, record FROM messages WHERE seq > ? "
                           "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        loads = json.loads
        return [Entry(seq, key, loads(record), appended) for seq, key, appended, record in rows]

    @staticmethod
    def _lookup_job(con: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(con.execute(f"SELECT key, seq FROM messages WHERE key IN ({marks})",
                                     chunk).fetchall())
        return found

    @staticmethod
    def _backlog_job(con: sqlite3.Connection) -> Backlog:
        count, oldest = con.execute("SELECT count(*), min(appended) FROM messages").fetchone()
        return Backlog(count, oldest)
