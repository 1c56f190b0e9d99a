"""The MessageStore contract, run against every backend (real databases, no mocks).

A backend joins by one entry in ``BACKENDS``: a function that opens a store on the test's
backing database (called again to "restart" onto the same data)."""

from __future__ import annotations

import importlib.util
import threading
from typing import Any, Callable, Iterator

import pytest
from twisted.internet.defer import gatherResults

from mup.store import Backlog, Entry, MessageStore, StoreClosed, StoreError
from mup.testing.process import wait_for

Opener = Callable[[], MessageStore]


def _postgres(request: pytest.FixtureRequest, reactor: Any) -> Opener:
    from mup.store.postgres import PostgresMessageStore

    url = request.getfixturevalue("pg_url")
    return lambda: PostgresMessageStore.open(url, reactor)


def _sqlite(request: pytest.FixtureRequest, reactor: Any) -> Opener:
    """The SQLite backend (one process per directory: the test closes a store before it opens
    the next one on the same directory)."""
    from mup.store import sqlite

    tmp = request.getfixturevalue("tmp_path")
    store_class: Any = sqlite.SQLiteMessageStore
    return lambda: store_class.open(str(tmp / "journal"), reactor=reactor)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Any], Opener]] = {"postgres": _postgres}
if importlib.util.find_spec("mup.store.sqlite") is not None:
    BACKENDS["sqlite"] = _sqlite


class Stores:
    """Opens stores of one backend on one database; closes them all at the end."""

    def __init__(self, opener: Opener, call: Callable[..., Any]) -> None:
        self._opener = opener
        self.call = call
        self.opened: list[MessageStore] = []

    def open(self) -> MessageStore:
        store = self._opener()
        self.opened.append(store)
        return store

    def close(self, store: MessageStore) -> None:
        self.call(store.close)

    def close_all(self) -> None:
        for store in self.opened:
            self.call(store.close)


@pytest.fixture(params=sorted(BACKENDS))
def stores(request: pytest.FixtureRequest, irc_reactor: Any) -> Iterator[Stores]:
    opener = BACKENDS[request.param](request, irc_reactor.reactor)
    made = Stores(opener, irc_reactor.call)
    yield made
    made.close_all()


def test_append_returns_entries_in_seq_order_and_pending_lists_them(stores: Stores) -> None:
    store = stores.open()
    assert isinstance(store, MessageStore)
    first = stores.call(store.append, "kannel:1", {"from": "+447911123456", "text": "hi"})
    second = stores.call(store.append, "kannel:2",
                         {"from": "+447911123456", "text": "\u00e9 \U0001f600 \x00"})
    assert isinstance(first, Entry) and isinstance(second, Entry)
    assert second.seq > first.seq > 0
    assert first.record == {"from": "+447911123456", "text": "hi"}
    pending = stores.call(store.pending)
    assert [(e.seq, e.key, e.record) for e in pending] == [
        (first.seq, "kannel:1", first.record), (second.seq, "kannel:2", second.record)]
    assert stores.call(store.pending, first.seq) == [second]
    assert stores.call(store.pending, 0, 1) == [first]


def test_a_key_is_stored_once_even_after_it_was_done(stores: Stores) -> None:
    store = stores.open()
    entry = stores.call(store.append, "kannel:7", {"n": 1})
    assert stores.call(store.append, "kannel:7", {"n": 2}) is None
    assert [e.record for e in stores.call(store.pending)] == [{"n": 1}]
    stores.call(store.mark_done, [entry.seq])
    assert stores.call(store.append, "kannel:7", {"n": 3}) is None
    assert stores.call(store.pending) == []


def test_duplicates_in_one_batch_are_stored_once(stores: Stores) -> None:
    store = stores.open()
    results = stores.call(lambda: gatherResults(
        [store.append(f"k{i % 5}", {"i": i}) for i in range(50)]))
    assert sum(r is not None for r in results) == 5
    assert [e.record["i"] for e in stores.call(store.pending)] == [0, 1, 2, 3, 4]


def test_lookup_finds_pending_keys_only(stores: Stores) -> None:
    store = stores.open()
    a = stores.call(store.append, "a", {})
    b = stores.call(store.append, "b", {})
    stores.call(store.mark_done, [b.seq])
    assert stores.call(store.lookup, ["a", "b", "never", "a"]) == {"a": a.seq}
    assert stores.call(store.lookup, []) == {}


def test_mark_done_and_backlog(stores: Stores) -> None:
    store = stores.open()
    assert stores.call(store.backlog) == Backlog(0, None)
    entries = [stores.call(store.append, f"k{i}", {"i": i}) for i in range(4)]
    backlog = stores.call(store.backlog)
    assert backlog.count == 4 and backlog.oldest == pytest.approx(entries[0].appended)
    stores.call(store.mark_done, [entries[0].seq, entries[2].seq])
    stores.call(store.mark_done, [entries[0].seq])  # twice: no error
    assert [e.seq for e in stores.call(store.pending)] == [entries[1].seq, entries[3].seq]
    backlog = stores.call(store.backlog)
    assert backlog.count == 2 and backlog.oldest == pytest.approx(entries[1].appended)


def test_concurrent_appends_get_distinct_growing_seqs(stores: Stores) -> None:
    store = stores.open()
    results = stores.call(lambda: gatherResults(
        [store.append(f"c{i}", {"i": i}) for i in range(300)]))
    seqs = [e.seq for e in results]
    assert len(set(seqs)) == 300
    assert seqs == sorted(seqs)  # one sender's appends keep their order
    assert [e.seq for e in stores.call(store.pending)] == seqs


def test_a_restart_keeps_pending_epoch_and_seq_order(stores: Stores) -> None:
    store = stores.open()
    kept = stores.call(store.append, "a", {"n": 1})
    done = stores.call(store.append, "b", {"n": 2})
    stores.call(store.mark_done, [done.seq])
    epoch = store.epoch
    stores.close(store)
    again = stores.open()
    assert again.epoch == epoch
    assert stores.call(again.pending) == [kept]
    assert stores.call(again.append, "b", {"n": 3}) is None
    later = stores.call(again.append, "c", {"n": 4})
    assert later.seq > done.seq


def test_subscribers_are_called_after_a_commit(stores: Stores) -> None:
    store = stores.open()
    called = threading.Event()
    unsubscribe = stores.call(store.subscribe, called.set)
    stores.call(store.append, "s1", {})
    wait_for(called.is_set, 5, "the subscriber to be called")
    stores.call(unsubscribe)
    stores.call(lambda: None)  # let a wake-up already scheduled run
    called.clear()
    stores.call(store.append, "s2", {})
    stores.call(store.pending)  # the commit is visible; a notification had time to arrive
    assert not called.is_set()


def test_closed_store_refuses_appends(stores: Stores) -> None:
    store = stores.open()
    assert store.writable()
    stores.close(store)
    with pytest.raises(StoreClosed):
        stores.call(store.append, "late", {})
    assert issubclass(StoreClosed, StoreError)
