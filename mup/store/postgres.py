"""The relay's message store in PostgreSQL: any number of relays share one database.

Every psycopg call runs off the reactor thread: appends on a writer thread with its own
connection (group commit: what arrives while a transaction runs goes into the next one), reads
and acknowledgements on a reader thread with another, and ``LISTEN mup_inbound`` on a third
thread that wakes subscribers on the reactor thread within milliseconds of any relay's commit.

Failover is libpq's: give a multi-host connection string with
``target_session_attrs=read-write`` and, when the connection breaks, the store reconnects by
itself (with backoff) to whichever host is the primary now.  While there is none,
:meth:`PostgresMessageStore.writable` is false and appends fail with :class:`StoreError`.

Tables (in the connection's ``search_path``): ``mup_meta`` (one row: schema version, the store's
epoch, the last sequence number handed out), ``mup_inbound`` (messages not yet done) and
``mup_keys`` (dedupe keys, kept ``dedupe_window`` after their message was done).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import psycopg
from psycopg import conninfo as pg_conninfo
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mup.store import Backlog, Entry, StoreClosed, StoreError, StoreOpenError

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresMessageStore", "redact"]

SCHEMA_VERSION = 1
CHANNEL = "mup_inbound"
DEDUPE_WINDOW = 7 * 86400.0
_SCHEMA_LOCK = 0x6D7570  # pg_advisory_xact_lock key held while creating/migrating the schema

_SCHEMA_V1 = [
    """CREATE TABLE mup_meta (
        id boolean PRIMARY KEY DEFAULT true CHECK (id),
        schema_version integer NOT NULL,
        epoch text NOT NULL,
        last_seq bigint NOT NULL DEFAULT 0,
        created timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE mup_keys (
        key text PRIMARY KEY,
        done_at timestamptz)""",
    "CREATE INDEX mup_keys_done_at ON mup_keys (done_at) WHERE done_at IS NOT NULL",
    """CREATE TABLE mup_inbound (
        seq bigint PRIMARY KEY,
        key text NOT NULL UNIQUE,
        record json NOT NULL,
        appended double precision NOT NULL)""",
]

MIGRATIONS: dict[int, list[str]] = {}
"""SQL that takes the schema from version N to N+1, applied in order on start."""

_log = Logger(namespace="mup.store.postgres")
T = TypeVar("T")


# --- connection strings: defaults, and error messages that never show the password ----------

_DEFAULTS = {"target_session_attrs": "read-write", "connect_timeout": "5", "keepalives": "1",
             "keepalives_idle": "10", "keepalives_interval": "3", "keepalives_count": "3"}
"""Added to the connection string unless it sets them: only a writable primary will do, and a
dead peer is noticed in seconds, not at TCP's default of hours."""


def _parse(conninfo: str, where: str) -> dict[str, Any]:
    try:
        params = pg_conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as e:
        raise StoreOpenError(f"{where}: not a libpq connection string: "
                             f"{redact(str(e), conninfo)}") from None
    if not conninfo.strip():
        raise StoreOpenError(f"{where}: empty connection string")
    return params


def _with_defaults(conninfo: str, params: dict[str, Any]) -> str:
    extra = {k: v for k, v in _DEFAULTS.items() if k not in params}
    return pg_conninfo.make_conninfo(conninfo, **extra)


def _named(conninfo: str, role: str) -> str:
    """``conninfo`` with ``application_name=mup-store-ROLE`` unless it names one itself, so
    ``pg_stat_activity`` shows which connection is which."""
    if "application_name" in pg_conninfo.conninfo_to_dict(conninfo):
        return conninfo
    return pg_conninfo.make_conninfo(conninfo, application_name=f"mup-store-{role}")


def redact(message: str, conninfo: str) -> str:
    """``message`` on one line, with the connection string's password (and any quoted fragment
    of an unparseable connection string, which might be one) replaced by ``***``."""
    text = " ".join(message.split())
    try:
        password = pg_conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        password = None
        keywords = {"host", "hostaddr", "port", "dbname", "user", "password", "options",
                    "sslmode", "target_session_attrs", "connect_timeout", "application_name"}

        def hide(m: re.Match[str]) -> str:
            inner = m.group(1)
            hidden = len(inner) > 1 and inner not in keywords and inner in conninfo
            return '"***"' if hidden else m.group(0)

        text = re.sub(r'"([^"]*)"', hide, text)
    if password:
        text = text.replace(str(password), "***")
    m = re.match(r"^(\w+://[^:/@]*:)([^@]*)(@)", conninfo)
    if m and m.group(2):
        text = text.replace(m.group(2), "***")
    return text


def _describe(conn: psycopg.Connection[Any]) -> str:
    info = conn.info
    return f"{info.host}:{info.port}/{info.dbname}"


# --- one connection on one thread -----------------------------------------------------------


class _Lost(Exception):
    """The connection broke (or the server is no longer a writable primary)."""


def _broken(conn: psycopg.Connection[Any] | None, error: psycopg.Error) -> bool:
    """The connection is unusable or not on a writable primary (not merely a statement that
    failed: a deadlock or a cancelled query leaves the connection fine)."""
    if conn is None or conn.closed or conn.broken:
        return True
    state = error.sqlstate or ""
    if state.startswith("40") or state == "57014":  # rollback (deadlock...), query cancelled
        return False
    return isinstance(error, (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction))


class _Worker:
    """A thread with its own connection: ``run(fn)`` calls ``fn(conn)`` in a transaction on that
    thread, connecting first if needed.  A broken connection is dropped and fails the call with
    :class:`_Lost`; the next call connects again (libpq picks the primary)."""

    def __init__(self, conninfo: str, name: str, reactor: Any) -> None:
        self.conninfo = _named(conninfo, name)
        self.name = name
        self.reactor = reactor
        self.conn: psycopg.Connection[Any] | None = None
        self.pool = ThreadPool(1, 1, name=f"mup-store-{name}")
        # Not before the reactor runs (after twistd's fork); calls queue until then.
        self.stopped = False
        reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        if not self.stopped:
            self.pool.start()

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], idempotent: bool = False
            ) -> Deferred[T]:
        """When a connection made earlier turns out broken (the server restarted, an idle
        connection was cut), connect again and call ``fn`` once more: always if ``idempotent``,
        else only if COMMIT was not sent yet (so nothing can have been committed)."""
        return deferToThreadPool(self.reactor, self.pool, self._call, fn, idempotent, True)

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T], idempotent: bool,
              retry: bool) -> T:
        conn = self.conn
        fresh = conn is None or conn.closed
        committing = False
        try:
            if conn is None or conn.closed:
                conn = self.conn = psycopg.Connection.connect(self.conninfo)
            with conn.transaction():
                result = fn(conn)
                committing = True
            return result
        except psycopg.Error as e:
            if not _broken(conn, e):
                raise
            self.drop()
            if retry and not fresh and (idempotent or not committing):
                return self._call(fn, idempotent, False)
            raise _Lost(redact(str(e), self.conninfo)) from None

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def stop(self) -> Deferred[None]:
        """Close the connection on its own thread, then stop the thread."""
        self.stopped = True
        if not self.pool.started:  # the reactor never ran: no thread, no connection
            return succeed(None)
        d = deferToThreadPool(self.reactor, self.pool, self.drop)
        d.addBoth(lambda _: self.pool.stop())
        return d


# --- the store ------------------------------------------------------------------------------


@dataclass
class _Append:
    key: str
    text: str
    appended: float
    deferred: Deferred[Entry | None]
    record: dict[str, Any]


class PostgresMessageStore:
    """A :class:`mup.store.MessageStore` in PostgreSQL, shared by any number of relays.

    Ordering: ``seq`` comes from a counter row (``mup_meta.last_seq``) that every append
    transaction locks (``SELECT ... FOR UPDATE``) before anything else and holds until COMMIT.
    So appends from all relays are serialised and commit in ``seq`` order: no transaction can
    commit a smaller ``seq`` after a larger one became visible, and ``pending(after=cursor)``
    never skips a row that commits later.  A SEQUENCE would not do: ``nextval()`` is handed out
    at call time, not at commit, so seq 5 can commit before seq 4 and a reader that saw 5 would
    skip 4 for good.  Taking the lock first also orders the dedupe keys' inserts, so two relays
    inserting the same keys in different orders cannot deadlock.  The cost is that commits from
    different relays do not overlap; group commit (one transaction per batch of appends) keeps
    that cheap: a relay's concurrent posts share one transaction and one WAL flush.

    Dedupe: ``INSERT INTO mup_keys ... ON CONFLICT DO NOTHING`` under a UNIQUE key, so the same
    gateway id posted to two relays is stored once; a done message's key is kept for
    ``dedupe_window`` seconds, then deleted by the background cleanup.
    """

    def __init__(self, conninfo: str, epoch: str, reactor: Any, *, where: str,
                 dedupe_window: float, cleanup_interval: float, batch_limit: int) -> None:
        self.epoch = epoch
        self.where = where
        self.dedupe_window = dedupe_window
        self.batch_limit = batch_limit
        self._conninfo = conninfo
        self._reactor = reactor
        self._writer = _Worker(conninfo, "writer", reactor)
        self._reader = _Worker(conninfo, "reader", reactor)
        self._queue: list[_Append] = []
        self._writing = False
        self._closed = False
        self._writable = True
        self._probing = False
        self._backoff = 0.0
        self._idle: list[Deferred[None]] = []
        self._subscribers: list[Callable[[], None]] = []
        self._wake_scheduled = False
        self._listener = _Listener(conninfo, reactor, self._notified, self._listener_lost)
        reactor.callWhenRunning(self._listener.start)
        self._cleanup = reactor.callLater(min(cleanup_interval, 5.0), self._clean,
                                          cleanup_interval)
        self._shutdown = reactor.addSystemEventTrigger("before", "shutdown", self.close)
        """Closed when the reactor stops, if the owner did not close it first: the worker
        threads would otherwise keep the process alive."""

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, conninfo: str, reactor: Any = None, *, where: str = "[relay] store",
             dedupe_window: float = DEDUPE_WINDOW, cleanup_interval: float = 300.0,
             batch_limit: int = 500) -> PostgresMessageStore:
        """Connect, create or migrate the schema, and read the store's epoch.  Blocks: call it
        before the reactor runs or from another thread (:meth:`connect` is the Deferred form).
        Any problem is a one-line :class:`StoreOpenError` naming ``where``, never the
        password."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        params = _parse(conninfo, where)
        full = _with_defaults(conninfo, params)
        try:
            conn = psycopg.Connection.connect(_named(full, "writer"))
        except psycopg.Error as e:
            raise StoreOpenError(f"{where}: cannot connect to PostgreSQL: "
                                 f"{redact(str(e), conninfo)}") from None
        server = _describe(conn)
        try:
            epoch = _prepare_schema(conn, where)
        except psycopg.Error as e:
            raise StoreOpenError(f"{where}: cannot set up the store in "
                                 f"{server}: {redact(str(e), conninfo)}") from None
        finally:
            conn.close()  # the worker threads connect on their own, after twistd's fork
        _log.info("store: PostgreSQL {server}, epoch {epoch}", server=server, epoch=epoch)
        return cls(full, epoch, reactor, where=where, dedupe_window=dedupe_window,
                   cleanup_interval=cleanup_interval, batch_limit=batch_limit)

    @classmethod
    def connect(cls, conninfo: str, reactor: Any = None, **kwargs: Any
                ) -> Deferred[PostgresMessageStore]:
        """:meth:`open` on a thread; fires with the store or fails with StoreOpenError."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        from twisted.internet.threads import deferToThread

        return deferToThread(cls.open, conninfo, reactor, **kwargs)

    # -- appends: group commit --------------------------------------------------------------

    def append(self, key: str, record: dict[str, Any]) -> Deferred[Entry | None]:
        if self._closed:
            return fail(StoreClosed("the store was closed"))
        if not self._writable:
            return fail(StoreError("no PostgreSQL primary reachable now"))
        try:
            key.encode("utf-8")
            if "\x00" in key:
                raise ValueError("a NUL character")
            text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        except (ValueError, TypeError) as e:
            return fail(ValueError(f"cannot store key {key!r}: {e}"))
        d: Deferred[Entry | None] = Deferred()
        self._queue.append(_Append(key, text, time.time(), d, record))
        if not self._writing:
            self._write_next()
        return d

    def _write_next(self) -> None:
        if not self._queue:
            self._writing = False
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)
            return
        batch = self._queue[:self.batch_limit]
        del self._queue[:self.batch_limit]
        self._writing = True
        d = self._writer.run(lambda conn: _append_batch(conn, batch))
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(batch,),
                       errbackArgs=(batch,))

    def _written(self, seqs: list[int | None], batch: list[_Append]) -> None:
        new = False
        for item, seq in zip(batch, seqs, strict=True):
            if seq is None:
                item.deferred.callback(None)
            else:
                new = True
                item.deferred.callback(Entry(seq, item.key, item.record, item.appended))
        if new:
            self._wake()
        self._write_next()

    def _write_failed(self, failure: Failure, batch: list[_Append]) -> None:
        if failure.check(_Lost):
            self._lost(failure.getErrorMessage())
            error: Exception = StoreError(f"PostgreSQL: {failure.getErrorMessage()}")
        else:
            _log.failure("store: an append transaction failed", failure)
            error = StoreError(f"PostgreSQL: {redact(failure.getErrorMessage(), self._conninfo)}")
        for item in batch:
            item.deferred.errback(error)
        if not self._writable or self._closed:
            queued, self._queue = self._queue, []
            for item in queued:
                item.deferred.errback(StoreClosed("the store was closed") if self._closed
                                      else StoreError("no PostgreSQL primary reachable now"))
        self._write_next()

    # -- connection state -------------------------------------------------------------------

    def writable(self) -> bool:
        return self._writable and not self._closed

    def _lost(self, reason: str) -> None:
        if self._writable:
            self._writable = False
            _log.warn("store: lost the PostgreSQL primary ({reason}); appends fail (503) until "
                      "one is back", reason=reason)
        self._probe_later()

    def _probe_later(self) -> None:
        if self._probing or self._closed:
            return
        self._probing = True
        self._backoff = min(max(self._backoff * 2, 0.05), 2.0)
        self._reactor.callLater(self._backoff, self._probe)

    def _probe(self) -> None:
        if self._closed:
            self._probing = False
            return
        d = self._writer.run(_probe_primary)

        def ok(server: str) -> None:
            self._probing = False
            self._backoff = 0.0
            if not self._writable:
                self._writable = True
                _log.info("store: connected to the PostgreSQL primary {server}", server=server)
                self._wake()

        def bad(failure: Failure) -> None:
            self._probing = False
            if self._writable and failure.check(_Lost):
                self._lost(failure.getErrorMessage())
            elif not self._writable:
                self._probe_later()

        d.addCallbacks(ok, bad)

    def _listener_lost(self) -> None:
        """The listening connection broke: check the writer's at once, so ``writable()`` (and
        ``/healthz``) turns false without waiting for the next append."""
        if self._writable and not self._probing and not self._closed:
            self._probing = True
            self._reactor.callLater(0, self._probe)

    # -- reads and acknowledgements ---------------------------------------------------------

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> Deferred[T]:
        if self._closed:
            return fail(StoreClosed("the store was closed"))

        def failed(failure: Failure) -> Failure:
            if failure.check(_Lost):
                return Failure(StoreError(f"PostgreSQL: {failure.getErrorMessage()}"))
            if failure.check(psycopg.Error):
                return Failure(StoreError(
                    f"PostgreSQL: {redact(failure.getErrorMessage(), self._conninfo)}"))
            return failure

        return self._reader.run(fn, idempotent=True).addErrback(failed)

    def pending(self, after: int = 0, limit: int | None = None) -> Deferred[list[Entry]]:
        def query(conn: psycopg.Connection[Any]) -> list[Entry]:
            rows = conn.execute(
                "SELECT seq, key, record, appended FROM mup_inbound WHERE seq > %s "
                "ORDER BY seq LIMIT %s", (after, limit)).fetchall()
            return [Entry(seq, key, record, appended) for seq, key, record, appended in rows]

        return self._read(query)

    def lookup(self, keys: Iterable[str]) -> Deferred[dict[str, int]]:
        wanted = list(dict.fromkeys(keys))

        def query(conn: psycopg.Connection[Any]) -> dict[str, int]:
            if not wanted:
                return {}
            rows = conn.execute("SELECT key, seq FROM mup_inbound WHERE key = ANY(%s)",
                                (wanted,)).fetchall()
            return dict(rows)

        return self._read(query)

    def mark_done(self, seqs: Iterable[int]) -> Deferred[None]:
        wanted = sorted(set(seqs))

        def done(conn: psycopg.Connection[Any]) -> None:
            if wanted:
                conn.execute(
                    "WITH gone AS (DELETE FROM mup_inbound WHERE seq = ANY(%s) RETURNING key) "
                    "UPDATE mup_keys SET done_at = now() WHERE key IN (SELECT key FROM gone)",
                    (wanted,))

        return self._read(done)

    def backlog(self) -> Deferred[Backlog]:
        def query(conn: psycopg.Connection[Any]) -> Backlog:
            count, oldest = conn.execute(
                "SELECT count(*), min(appended) FROM mup_inbound").fetchone() or (0, None)
            return Backlog(count, oldest)

        return self._read(query)

    def _clean(self, interval: float) -> None:
        """Delete dedupe keys whose message was done more than ``dedupe_window`` ago, a slice
        at a time (done messages themselves are deleted by :meth:`mark_done`)."""
        window = self.dedupe_window

        def clean(conn: psycopg.Connection[Any]) -> int:
            cur = conn.execute(
                "DELETE FROM mup_keys WHERE key IN (SELECT key FROM mup_keys WHERE done_at < "
                "now() - make_interval(secs => %s) LIMIT 10000)", (window,))
            return cur.rowcount

        def again(deleted: int) -> None:
            if not self._closed:
                self._cleanup = self._reactor.callLater(1.0 if deleted >= 10000 else interval,
                                                        self._clean, interval)

        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            again(0)

        self._read(clean).addCallbacks(again, failed)

    def expire_keys(self) -> Deferred[int]:
        """Run the cleanup now; fires with the number of dedupe keys deleted (for tests)."""
        window = self.dedupe_window
        return self._read(lambda conn: conn.execute(
            "DELETE FROM mup_keys WHERE done_at < now() - make_interval(secs => %s)",
            (window,)).rowcount)

    # -- notifications ----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def listening(self) -> bool:
        """True while the LISTEN connection is up: commits by other relays wake subscribers."""
        return self._listener.connected.is_set()

    def _notified(self) -> None:
        self._wake()

    def _wake(self) -> None:
        """Call the subscribers once, soon (several commits in one reactor turn: one call)."""
        if self._wake_scheduled or self._closed:
            return
        self._wake_scheduled = True
        self._reactor.callLater(0, self._call_subscribers)

    def _call_subscribers(self) -> None:
        self._wake_scheduled = False
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # noqa: BLE001 - one subscriber must not stop the others
                _log.failure("store: a subscriber failed")

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        if self._closed:
            return succeed(None)
        self._closed = True
        self._reactor.removeSystemEventTrigger(self._shutdown)
        self._subscribers.clear()
        if self._cleanup.active():
            self._cleanup.cancel()
        queued, self._queue = self._queue, []
        for item in queued:
            item.deferred.errback(StoreClosed("the store was closed"))
        idle: Deferred[None] = Deferred()
        if self._writing:
            self._idle.append(idle)
        else:
            idle.callback(None)

        async def shut() -> None:
            await idle
            await self._writer.stop()
            await self._reader.stop()
            await self._listener.stop()

        return Deferred.fromCoroutine(shut())


# --- SQL run on the worker threads ----------------------------------------------------------


def _prepare_schema(conn: psycopg.Connection[Any], where: str) -> str:
    """Create the tables on first start, migrate an older schema; return the store's epoch."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        exists = conn.execute("SELECT to_regclass('mup_meta') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            epoch = secrets.token_hex(6)
            conn.execute("INSERT INTO mup_meta (schema_version, epoch) VALUES (%s, %s)",
                         (1, epoch))
        row = conn.execute("SELECT schema_version, epoch FROM mup_meta").fetchone()
        if row is None:
            raise StoreOpenError(f"{where}: mup_meta has no row; not a mup store")
        version, epoch = row
        epoch_text: str = epoch
        if version > SCHEMA_VERSION:
            raise StoreOpenError(f"{where}: the store has schema version {version}, newer than "
                                 f"this mup understands ({SCHEMA_VERSION}); upgrade mup")
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
            conn.execute("UPDATE mup_meta SET schema_version = %s", (version,))
    return epoch_text


_APPEND = """
WITH batch AS (
    SELECT * FROM unnest(%(keys)s::text[], %(records)s::json[], %(appended)s::float8[])
        WITH ORDINALITY AS b(key, record, appended, ord)),
fresh AS (
    INSERT INTO mup_keys (key) SELECT DISTINCT key FROM batch
    ON CONFLICT DO NOTHING RETURNING key),
firsts AS (
    SELECT DISTINCT ON (b.key) b.key, b.record, b.appended, b.ord
    FROM batch b JOIN fresh f ON f.key = b.key ORDER BY b.key, b.ord),
numbered AS (
    SELECT m.last_seq + row_number() OVER (ORDER BY f.ord) AS seq, f.*
    FROM firsts f, mup_meta m),
stored AS (
    INSERT INTO mup_inbound (seq, key, record, appended)
    SELECT seq, key, record, appended FROM numbered),
counted AS (
    UPDATE mup_meta SET last_seq = last_seq + (SELECT count(*) FROM numbered))
SELECT ord, seq FROM numbered
"""
"""One statement for a batch: insert the keys not seen before, number the first message of
each new key in batch order after ``last_seq``, store them and move ``last_seq`` on."""


def _append_batch(conn: psycopg.Connection[Any], batch: list[_Append]) -> list[int | None]:
    """One transaction for a batch, in one round trip (pipeline) before COMMIT: lock the
    counter row, then :data:`_APPEND`, then NOTIFY; the caller's transaction COMMITs."""
    params = {"keys": [item.key for item in batch],
              "records": [item.text for item in batch],
              "appended": [item.appended for item in batch]}
    with conn.pipeline():
        conn.execute("SELECT last_seq FROM mup_meta FOR UPDATE")
        cur = conn.execute(_APPEND, params)
        conn.execute(f"NOTIFY {CHANNEL}")
    seqs: list[int | None] = [None] * len(batch)
    for ord_, seq in cur.fetchall():
        seqs[ord_ - 1] = seq
    return seqs


def _probe_primary(conn: psycopg.Connection[Any]) -> str:
    (read_only,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()  # type: ignore[misc]
    if read_only:
        raise psycopg.errors.ReadOnlySqlTransaction("the server is a standby")
    return _describe(conn)


# --- LISTEN on its own thread ---------------------------------------------------------------


class _Listener:
    """A thread holding ``LISTEN mup_inbound`` on its own connection; calls ``notified`` on the
    reactor thread for each notification and once after every (re)connect, and ``lost`` when
    the connection breaks (then reconnects with backoff)."""

    def __init__(self, conninfo: str, reactor: Any, notified: Callable[[], None],
                 lost: Callable[[], None]) -> None:
        self.conninfo = _named(conninfo, "listen")
        self.reactor = reactor
        self.notified = notified
        self.lost = lost
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mup-store-listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        if not self.stopping.is_set():
            self.thread.start()

    def _run(self) -> None:
        backoff = 0.0
        up = True  # until a connection fails: report each fall from up to down once
        while not self.stopping.is_set():
            try:
                with psycopg.Connection.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff, up = 0.0, True
                    self.reactor.callFromThread(self.notified)  # what came while it was down
                    self.connected.set()
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.reactor.callFromThread(self.notified)
                            if self.stopping.is_set():
                                break
            except psycopg.Error:
                self.connected.clear()
                if up and not self.stopping.is_set():
                    self.reactor.callFromThread(self.lost)
                up = False
            if self.stopping.is_set():
                return
            backoff = min(max(backoff * 2, 0.05), 2.0)
            self.stopping.wait(backoff)

    def stop(self) -> Deferred[None]:
        from twisted.internet.threads import deferToThread

        self.stopping.set()
        if self.thread.ident is None:  # never started (the reactor never ran)
            return succeed(None)
        return deferToThread(self.thread.join, 5.0)
