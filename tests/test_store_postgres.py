"""PostgresMessageStore against real PostgreSQL servers: several relays on one database, commit
order, notifications between relays, bad connection strings, a database that goes away, and
failover from a killed primary to its synchronous standby."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
from twisted.internet.defer import Deferred, gatherResults

from mup.store import Entry, StoreError, StoreOpenError
from mup.store.postgres import PostgresMessageStore
from mup.testing.postgres import Postgres
from mup.testing.process import wait_for


@pytest.fixture
def opened(irc_reactor: Any) -> Iterator[list[PostgresMessageStore]]:
    """Stores a test opened; closed after it."""
    stores: list[PostgresMessageStore] = []
    yield stores
    for store in stores:
        irc_reactor.call(store.close)


def open_store(opened: list[PostgresMessageStore], url: str, reactor: Any,
               **kwargs: Any) -> PostgresMessageStore:
    store = PostgresMessageStore.open(url, reactor, **kwargs)
    opened.append(store)
    return store


class Streamer:
    """``senders`` appenders in the reactor, each appending its next key as soon as the last
    append fired (a little later after a failure); records what succeeded and what failed."""

    def __init__(self, store: PostgresMessageStore, reactor: Any, senders: int, prefix: str,
                 limit: int | None = None) -> None:
        self.store = store
        self.reactor = reactor
        self.senders = senders
        self.prefix = prefix
        self.limit = limit
        self.ok: list[Entry] = []
        self.failed: list[BaseException] = []
        self.stopping = False
        self.running = 0
        self.finished: Deferred[None] = Deferred()
        self._counts = [0] * senders

    def start(self) -> None:
        self.running = self.senders
        for sender in range(self.senders):
            self._next(sender)

    def stop(self) -> Deferred[None]:
        self.stopping = True
        return self.finished

    def _next(self, sender: int) -> None:
        n = self._counts[sender]
        if self.stopping or (self.limit is not None and n >= self.limit):
            self.running -= 1
            if self.running == 0:
                self.finished.callback(None)
            return
        self._counts[sender] += 1
        d = self.store.append(f"{self.prefix}{sender}-{n}", {"sender": sender, "n": n})

        def ok(entry: Entry | None) -> float:
            assert entry is not None
            self.ok.append(entry)
            return 0.0

        def bad(failure: Any) -> float:
            self.failed.append(failure.value)
            return 0.02

        d.addCallbacks(ok, bad)
        d.addCallback(lambda delay: self.reactor.callLater(delay, self._next, sender))


def test_two_relays_store_a_key_once_and_share_the_epoch(
        pg_url: str, irc_reactor: Any, opened: list) -> None:
    a = open_store(opened, pg_url, irc_reactor.reactor)
    b = open_store(opened, pg_url, irc_reactor.reactor)
    assert a.epoch == b.epoch
    both = irc_reactor.call(lambda: gatherResults(
        [a.append("kannel:42", {"via": "a"}), b.append("kannel:42", {"via": "b"})]))
    assert sum(r is not None for r in both) == 1
    assert len(irc_reactor.call(a.pending)) == 1
    assert irc_reactor.call(b.append, "kannel:42", {"via": "b"}) is None


def test_a_cursor_never_skips_a_row_under_concurrent_appends_from_two_relays(
        pg_url: str, irc_reactor: Any, opened: list) -> None:
    """Walk ``pending(after=cursor)`` while two relays append concurrently: every committed
    row must be seen by the walk (a row committing with a smaller seq after a larger one was
    visible would be skipped for good)."""
    call = irc_reactor.call
    relays = [open_store(opened, pg_url, irc_reactor.reactor) for _ in range(2)]
    reader = open_store(opened, pg_url, irc_reactor.reactor)
    streams = [Streamer(store, irc_reactor.reactor, 16, f"r{i}-", limit=40)
               for i, store in enumerate(relays)]
    for stream in streams:
        call(stream.start)
    seen: list[int] = []
    cursor, walks = 0, 0
    while not all(s.finished.called for s in streams):
        batch = call(reader.pending, cursor)
        walks += 1
        if batch:
            seen += [e.seq for e in batch]
            cursor = batch[-1].seq
    seen += [e.seq for e in call(reader.pending, cursor)]
    committed = sorted(e.seq for s in streams for e in s.ok)
    assert not any(s.failed for s in streams)
    assert len(committed) == 2 * 16 * 40
    assert walks > 1
    assert seen == committed


def test_a_commit_on_one_relay_wakes_subscribers_of_another(
        pg_url: str, irc_reactor: Any, opened: list) -> None:
    a = open_store(opened, pg_url, irc_reactor.reactor)
    b = open_store(opened, pg_url, irc_reactor.reactor)
    woken = threading.Event()
    wait_for(b.listening, 10, "b to LISTEN")
    irc_reactor.call(b.subscribe, woken.set)
    irc_reactor.call(lambda: None)  # the wake-up from b's own connect has run
    woken.clear()
    irc_reactor.call(a.append, "n1", {})
    wait_for(woken.is_set, 5, "b's subscriber to be called")


def test_done_keys_are_deleted_after_the_dedupe_window(
        pg_url: str, irc_reactor: Any, opened: list) -> None:
    call = irc_reactor.call
    kept = open_store(opened, pg_url, irc_reactor.reactor)
    short = open_store(opened, pg_url, irc_reactor.reactor, dedupe_window=0.0)
    entry = call(kept.append, "k", {"n": 1})
    call(kept.mark_done, [entry.seq])
    assert call(kept.expire_keys) == 0
    assert call(kept.append, "k", {"n": 2}) is None
    assert call(short.expire_keys) == 1
    again = call(kept.append, "k", {"n": 3})
    assert again is not None and again.seq > entry.seq


def test_the_background_cleanup_deletes_expired_keys(
        pg_url: str, pg_server: Postgres, irc_reactor: Any, opened: list) -> None:
    store = open_store(opened, pg_url, irc_reactor.reactor, dedupe_window=0.0,
                       cleanup_interval=0.05)
    entry = irc_reactor.call(store.append, "k", {})
    irc_reactor.call(store.mark_done, [entry.seq])
    dbname = pg_url.rsplit("/", 1)[1]
    wait_for(lambda: pg_server.execute("SELECT count(*) FROM mup_keys", dbname=dbname)
             == [(0,)], 10, "the cleanup to delete the expired key")


def test_relays_starting_together_on_an_empty_database_share_one_schema_and_epoch(
        pg_url: str, irc_reactor: Any, opened: list) -> None:
    results: list[Any] = []

    def start() -> None:
        try:
            results.append(PostgresMessageStore.open(pg_url, irc_reactor.reactor))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    opened.extend(r for r in results if isinstance(r, PostgresMessageStore))
    assert len(opened) == 4, results
    assert len({store.epoch for store in opened}) == 1


def test_connect_is_open_off_the_reactor_thread(pg_url: str, irc_reactor: Any,
                                                opened: list) -> None:
    store = irc_reactor.call(PostgresMessageStore.connect, pg_url, irc_reactor.reactor)
    opened.append(store)
    assert irc_reactor.call(store.append, "k", {}) is not None
    with pytest.raises(StoreOpenError, match=r"^\[relay\] store: cannot connect"):
        irc_reactor.call(PostgresMessageStore.connect, "postgresql://127.0.0.1:1/x",
                         irc_reactor.reactor)


def test_a_key_that_cannot_be_stored_fails_alone(
        pg_url: str, irc_reactor: Any, opened: list) -> None:
    store = open_store(opened, pg_url, irc_reactor.reactor)
    with pytest.raises(ValueError):
        irc_reactor.call(store.append, "bad\x00key", {})
    assert irc_reactor.call(store.append, "good", {}) is not None


@pytest.mark.parametrize("conninfo", [
    "postgresql://mup:s3cr3t-pw@127.0.0.1:1/mup",
    "host=127.0.0.1 port=1 password=s3cr3t-pw dbname=mup",
    "postgresql://mup:s3cr3t-pw@127.0.0.1:notaport/mup",
    "host=127.0.0.1 s3cr3t-pw",
])
def test_a_bad_or_unreachable_store_is_one_line_naming_the_key(conninfo: str) -> None:
    with pytest.raises(StoreOpenError) as raised:
        PostgresMessageStore.open(conninfo, where="mup.toml: [relay] store")
    message = str(raised.value)
    assert message.startswith("mup.toml: [relay] store: ")
    assert "\n" not in message
    assert "s3cr3t-pw" not in message


def test_a_store_from_a_newer_mup_is_refused(
        pg_url: str, pg_server: Postgres, irc_reactor: Any, opened: list) -> None:
    open_store(opened, pg_url, irc_reactor.reactor)
    pg_server.execute("UPDATE mup_meta SET schema_version = 99", dbname=pg_url.rsplit("/", 1)[1])
    with pytest.raises(StoreOpenError, match=r"\[relay\] store: .*schema version 99"):
        PostgresMessageStore.open(pg_url, irc_reactor.reactor)


def test_a_database_that_goes_away_fails_appends_until_it_is_back(irc_reactor: Any,
                                                                   opened: list) -> None:
    call = irc_reactor.call
    with Postgres(name="restart") as server:
        store = open_store(opened, server.url(), irc_reactor.reactor)
        first = call(store.append, "before", {})
        server.stop()
        wait_for(lambda: not store.writable(), 10, "the store to notice")
        with pytest.raises(StoreError):
            call(store.append, "during", {})
        server.start()
        wait_for(store.writable, 20, "the store to reconnect")
        after = call(store.append, "after", {})
        assert after.seq > first.seq
        assert [e.key for e in call(store.pending)] == ["before", "after"]


def test_an_append_on_a_connection_cut_while_idle_is_retried_on_a_new_one(
        pg_url: str, pg_server: Postgres, irc_reactor: Any, opened: list) -> None:
    """The writer's idle connection was terminated (a restart, a firewall): nothing of the next
    batch can have committed before the failure, so it is sent again on a new connection."""
    call = irc_reactor.call
    store = open_store(opened, pg_url, irc_reactor.reactor)
    first = call(store.append, "one", {})
    dbname = pg_url.rsplit("/", 1)[1]
    assert pg_server.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = 'mup-store-writer'", (dbname,), dbname=dbname) == [(True,)]
    second = call(store.append, "two", {})
    assert second.seq > first.seq
    assert store.writable()


def test_failover_to_the_synchronous_standby_loses_no_acknowledged_append(
        pg_failover: tuple[Postgres, Postgres], irc_reactor: Any, opened: list) -> None:
    """kill -9 the primary while appends stream, promote the standby: every append that fired
    is on the new primary, the ones made with no primary failed with StoreError, and the store
    found the new primary by itself through the multi-host connection string."""
    call = irc_reactor.call
    primary, standby = pg_failover
    primary.create_database("mup")
    url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/mup"
           "?target_session_attrs=read-write")
    store = open_store(opened, url, irc_reactor.reactor)
    stream = Streamer(store, irc_reactor.reactor, 8, "f")
    call(stream.start)
    wait_for(lambda: len(stream.ok) >= 100, 30, "appends on the primary")
    primary.kill()
    wait_for(lambda: not store.writable(), 10, "the store to notice the primary is gone")
    wait_for(lambda: len(stream.failed) >= 8, 10, "appends to fail with no primary")
    down = len(stream.ok)
    standby.promote()
    wait_for(store.writable, 30, "the store to find the new primary")
    wait_for(lambda: len(stream.ok) >= down + 100, 30, "appends on the new primary")
    call(stream.stop)

    assert all(isinstance(e, StoreError) for e in stream.failed), stream.failed[:3]
    stored = {key for (key,) in standby.execute("SELECT key FROM mup_inbound", dbname="mup")}
    acknowledged = {e.key for e in stream.ok}
    assert acknowledged <= stored, sorted(acknowledged - stored)[:5]
    seqs = [e.seq for e in stream.ok]
    assert len(set(seqs)) == len(seqs)
    assert [e.key for e in call(store.pending, 0)] == [
        key for (key,) in standby.execute("SELECT key FROM mup_inbound ORDER BY seq",
                                          dbname="mup")]
