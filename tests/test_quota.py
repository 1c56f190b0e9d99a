"""The SMS budget: per-sender bucket and daily quota, global daily cap, kept across restarts
(in the real SQLite state store on a tmp dir, written on the clock's turn), and imported from
the JSON-lines file of older mups."""

import shutil
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock

from mup.quota import Quota
from mup.store import StoreError
from mup.store.memory import MemoryStateStore
from mup.store.sqlitestate import SQLiteStateStore

MIDDAY = 1_800_000_000 - 1_800_000_000 % 86400 + 12 * 3600
OLD = Path(__file__).parent / "data" / "state-v0"


def clock_at(t=MIDDAY):
    clock = Clock()
    clock.advance(t)
    return clock


def make(store, clock, **kw):
    settings = {"sender_burst": 5, "sender_rate": 10.0, "sender_daily": 50, "global_daily": 500}
    settings.update(kw)
    return Quota(store, clock, **settings)


def restart(store, tmp_path, clock):
    """Let the writes commit, close the store and open it again."""
    d = store.close()
    clock.advance(0)
    assert d.called
    return SQLiteStateStore.open(str(tmp_path), clock)


def test_burst_then_rate():
    clock = clock_at()
    q = make(MemoryStateStore(), clock)
    assert q.reserve("joe", 3) is None
    assert q.reserve("joe", 2) is None
    assert "too fast; try again in 6 min" in q.reserve("joe", 1)
    clock.advance(359)
    assert q.reserve("joe", 1) is not None
    clock.advance(1)
    assert q.reserve("joe", 1) is None
    assert q.reserve("ann", 5) is None  # per sender


def test_restart_keeps_counters(tmp_path):
    clock = clock_at()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    q = make(store, clock, sender_daily=6, sender_burst=10)
    assert q.reserve("Joe", 4) is None
    assert q.reserve("ann", 2) is None
    store = restart(store, tmp_path, clock)
    again = make(store, clock, sender_daily=6, sender_burst=10)
    assert again.used("joe") == 4 and again.used_globally == 6
    assert "2 of your 6 SMS segments left today" in again.reserve("joe", 3)
    # The bucket is kept too: 4 of 10 taken, at 10/h.
    store = restart(store, tmp_path, clock)
    third = make(store, clock, sender_daily=0, sender_burst=10)
    assert third.reserve("joe", 6) is None
    assert "too fast" in third.reserve("joe", 1)


def test_reserving_does_not_wait_for_the_disk(tmp_path):
    """Written behind: the row is committed on the writer's turn, not inside reserve()."""
    import sqlite3

    clock = clock_at()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    q = make(store, clock)
    assert q.reserve("joe", 2) is None

    def rows():
        with sqlite3.connect(tmp_path / "state.sqlite3") as db:
            return db.execute("SELECT key FROM state WHERE tbl = 'quota'").fetchall()

    assert rows() == []
    clock.advance(0)
    assert rows() == [("joe",)]
    store.close()
    clock.advance(0)


def test_new_day_resets(tmp_path):
    clock = clock_at()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    q = make(store, clock, sender_daily=2, sender_rate=0)
    assert q.reserve("joe", 2) is None
    reply = q.reserve("joe", 1)
    assert "resets in 12 h (midnight UTC)" in reply
    clock.advance(12 * 3600)
    assert q.reserve("joe", 1) is None
    # A restart on the new day does not bring yesterday back.
    store = restart(store, tmp_path, clock)
    assert make(store, clock, sender_daily=2, sender_rate=0).used("joe") == 1
    # Nor does one the day after: and the stale row is dropped.
    clock.advance(86400)
    store = restart(store, tmp_path, clock)
    assert make(store, clock, sender_daily=2, sender_rate=0).used("joe") == 0
    clock.advance(0)
    assert store.load("quota").result == {}


def test_global_cap():
    clock = clock_at()
    q = make(MemoryStateStore(), clock, global_daily=7)
    assert q.reserve("a", 5) is None
    assert "budget for everyone today (7 segments) is spent" in q.reserve("b", 3)
    assert q.reserve("b", 2) is None


def test_refund():
    q = make(MemoryStateStore(), clock_at())
    assert q.reserve("joe", 5) is None
    q.refund("joe", 5)
    assert q.used("joe") == 0 and q.used_globally == 0
    assert q.reserve("joe", 5) is None


def test_more_than_a_burst():
    q = make(MemoryStateStore(), clock_at(), sender_burst=2)
    assert "more than the 2 you may send at once" in q.reserve("joe", 3)


def test_zero_means_no_limit():
    q = make(MemoryStateStore(), clock_at(), sender_rate=0, sender_daily=0, global_daily=0)
    for _ in range(100):
        assert q.reserve("joe", 3) is None
    b = q.budget("joe")
    assert (b.sent_today, b.daily_left, b.global_left, b.now) == (300, None, None, None)


def test_budget_says_what_is_left_and_when_it_refills():
    clock = clock_at()
    q = make(MemoryStateStore(), clock, sender_burst=5, sender_rate=10.0, sender_daily=50,
             global_daily=500)
    fresh = q.budget("Joe")
    assert (fresh.sent_today, fresh.daily_left, fresh.global_left, fresh.now) == (0, 50, 500, 5)
    assert fresh.next_in == 0 and fresh.full_in == 0 and fresh.resets_in == 12 * 3600
    assert q.reserve("joe", 5) is None
    assert q.reserve("ann", 2) is None
    b = q.budget("JOE")
    assert (b.sent_today, b.daily_left, b.global_left, b.now) == (5, 45, 493, 0)
    assert round(b.next_in) == 360 and round(b.full_in) == 1800  # 10 per hour
    clock.advance(400)
    b = q.budget("joe")
    assert b.now == 1 and round(b.next_in) == 320
    # The smallest limit wins: two left today for everyone.
    q2 = make(MemoryStateStore(), clock, global_daily=2)
    assert q2.budget("joe").now == 2


def test_reset_gives_a_fresh_budget_and_is_kept(tmp_path):
    clock = clock_at()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    q = make(store, clock, sender_daily=6)
    assert q.reserve("joe", 5) is None and q.reserve("ann", 1) is None
    q.reset("Joe")
    assert (q.used("joe"), q.used_globally, q.budget("joe").now) == (0, 1, 5)
    store = restart(store, tmp_path, clock)
    again = make(store, clock, sender_daily=6)
    assert (again.used("joe"), again.used_globally) == (0, 1)
    assert again.reserve("joe", 5) is None


class FlakyStore(MemoryStateStore):
    """Memory, with writes (or the load) that fail while ``broken``: a full disk."""

    def __init__(self, broken=False, unreadable=False):
        super().__init__()
        self.broken = broken
        self.unreadable = unreadable

    def load(self, table):
        if self.unreadable:
            return defer.fail(StoreError("no such table"))
        return super().load(table)

    def put(self, table, key, value):
        if self.broken:
            return defer.fail(StoreError("database or disk is full"))
        return super().put(table, key, value)


def test_unwritable_state_refuses_until_it_is_written_again():
    """Behaviour change from the JSON-lines file: a write now fails behind the reservation that
    made it, so the next one is refused (fail closed) until the store takes writes again."""
    clock = clock_at()
    store = FlakyStore()
    q = make(store, clock)
    store.broken = True
    assert q.reserve("joe", 2) is None  # the write fails behind it
    assert "can't record the SMS budget" in q.reserve("joe", 1)
    assert q.used("joe") == 2
    store.broken = False
    assert "can't record the SMS budget" in q.reserve("joe", 1)  # and writes joe's row again
    assert store.tables["quota"]["joe"]["used"] == 2
    assert q.reserve("joe", 1) is None
    assert store.tables["quota"]["joe"]["used"] == 3


def test_unreadable_state_fails_closed():
    q = make(FlakyStore(unreadable=True), clock_at())
    assert "can't record the SMS budget" in q.reserve("joe", 1)


def test_imports_the_old_jsonl_file_once(tmp_path):
    """tests/data/state-v0 was written by the JSON-lines code: joe sent 3 + 2 today, pat's 2
    were refunded, ann's 4 were yesterday."""
    shutil.copy(OLD / "sms-quota.jsonl", tmp_path)
    clock = clock_at(1_800_007_800)  # 10:10 UTC, when the file was written
    store = SQLiteStateStore.open(str(tmp_path), clock)
    q = make(store, clock, legacy_directory=str(tmp_path))
    assert (q.used("joe"), q.used("pat"), q.used("ann"), q.used_globally) == (5, 0, 0, 5)
    # joe's bucket: 5 - 3 at 10:00, + 10/h for 10 min, - 2 at 10:10.
    assert q.budget("joe").now == 1
    clock.advance(0)  # committed: the file is moved aside, not deleted
    assert not (tmp_path / "sms-quota.jsonl").exists()
    assert (tmp_path / "sms-quota.jsonl.imported").read_bytes() == \
        (OLD / "sms-quota.jsonl").read_bytes()
    store = restart(store, tmp_path, clock)
    again = make(store, clock, legacy_directory=str(tmp_path))
    assert (again.used("joe"), again.used_globally, again.budget("joe").now) == (5, 5, 1)


def test_old_file_with_a_torn_last_line_imports_the_rest(tmp_path):
    (tmp_path / "sms-quota.jsonl").write_bytes((OLD / "sms-quota.jsonl").read_bytes()
                                               + b'{"t": 1800007800, "s": "joe", "n"')
    clock = clock_at(1_800_007_800)
    q = make(SQLiteStateStore.open(str(tmp_path), clock), clock,
             legacy_directory=str(tmp_path))
    assert q.used("joe") == 5
