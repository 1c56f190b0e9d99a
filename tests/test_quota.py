"""The SMS budget: per-sender bucket and daily quota, global daily cap, kept across restarts."""

from twisted.internet.task import Clock

from mup.quota import Quota

MIDDAY = 1_800_000_000 - 1_800_000_000 % 86400 + 12 * 3600


def clock_at(t=MIDDAY):
    clock = Clock()
    clock.advance(t)
    return clock


def make(tmp_path, clock, **kw):
    settings = {"sender_burst": 5, "sender_rate": 10.0, "sender_daily": 50, "global_daily": 500}
    settings.update(kw)
    return Quota(str(tmp_path), clock, **settings)


def test_burst_then_rate(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock)
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
    q = make(tmp_path, clock, sender_daily=6, sender_burst=10)
    assert q.reserve("Joe", 4) is None
    assert q.reserve("ann", 2) is None
    again = make(tmp_path, clock, sender_daily=6, sender_burst=10)
    assert again.used("joe") == 4 and again.used_globally == 6
    assert "2 of your 6 SMS segments left today" in again.reserve("joe", 3)
    # The bucket is kept too: 4 of 10 taken, at 10/h.
    third = make(tmp_path, clock, sender_daily=0, sender_burst=10)
    assert third.reserve("joe", 6) is None
    assert "too fast" in third.reserve("joe", 1)


def test_new_day_resets(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock, sender_daily=2, sender_rate=0)
    assert q.reserve("joe", 2) is None
    reply = q.reserve("joe", 1)
    assert "resets in 12 h (midnight UTC)" in reply
    clock.advance(12 * 3600)
    assert q.reserve("joe", 1) is None
    # A restart on the new day does not bring yesterday back.
    assert make(tmp_path, clock, sender_daily=2, sender_rate=0).used("joe") == 1


def test_global_cap(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock, global_daily=7)
    assert q.reserve("a", 5) is None
    assert "budget for everyone today (7 segments) is spent" in q.reserve("b", 3)
    assert q.reserve("b", 2) is None


def test_refund(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock)
    assert q.reserve("joe", 5) is None
    q.refund("joe", 5)
    assert q.used("joe") == 0 and q.used_globally == 0
    assert q.reserve("joe", 5) is None


def test_more_than_a_burst(tmp_path):
    q = make(tmp_path, clock_at(), sender_burst=2)
    assert "more than the 2 you may send at once" in q.reserve("joe", 3)


def test_zero_means_no_limit(tmp_path):
    q = make(tmp_path, clock_at(), sender_rate=0, sender_daily=0, global_daily=0)
    for _ in range(100):
        assert q.reserve("joe", 3) is None


def test_torn_last_line_is_skipped(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock, sender_burst=10)
    assert q.reserve("joe", 3) is None
    with open(tmp_path / "sms-quota.jsonl", "a") as f:
        f.write('{"t": 1800000000, "s": "joe", "n"')  # a crash mid-write
    again = make(tmp_path, clock, sender_burst=10)
    assert again.used("joe") == 3
    assert again.reserve("joe", 1) is None
    assert make(tmp_path, clock, sender_burst=10).used("joe") == 4


def test_unreadable_state_fails_closed(tmp_path):
    (tmp_path / "sms-quota.jsonl").mkdir()  # cannot be read as a file
    q = make(tmp_path, clock_at())
    assert "budget for everyone" in q.reserve("joe", 1)


def test_file_stays_small(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock, sender_rate=0, sender_daily=0, global_daily=0)
    for _ in range(3):
        for _ in range(400):
            q.reserve("joe", 1)
        clock.advance(86400)
    lines = (tmp_path / "sms-quota.jsonl").read_text().count("\n")
    assert lines <= 2 * 400 + 1000
    assert make(tmp_path, clock, sender_rate=0, sender_daily=0, global_daily=0).used("joe") == 0


def test_one_fsync_for_a_burst_of_appends(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock)
    q.reserve("joe", 1)
    q.reserve("ann", 1)
    assert len(clock.getDelayedCalls()) == 1  # the coalesced fsync, off the sending path
    clock.advance(0.05)
    assert clock.getDelayedCalls() == []
    # Already readable by a new process before the fsync: it was flushed at once.
    q.reserve("joe", 1)
    assert make(tmp_path, clock).used("joe") == 2


def test_unwritable_state_refuses_and_takes_nothing(tmp_path):
    clock = clock_at()
    q = make(tmp_path, clock)
    (tmp_path / "sms-quota.jsonl").unlink(missing_ok=True)
    (tmp_path / "sms-quota.jsonl").mkdir()  # appending now fails
    assert "can't record the SMS budget" in q.reserve("joe", 5)
    assert q.used("joe") == 0
    (tmp_path / "sms-quota.jsonl").rmdir()
    assert q.reserve("joe", 5) is None  # the bucket was not drained by the failure


class ThreadedClock(Clock):
    """A Clock that is also a reactor with threads: work handed to a thread is kept here."""

    def __init__(self):
        super().__init__()
        self.in_thread = []

    def callInThread(self, f, *args):  # noqa: N802 - the reactor's name
        self.in_thread.append((f, args))


def test_the_timed_fsync_runs_in_a_thread_on_its_own_descriptor(tmp_path, monkeypatch):
    import os

    clock = ThreadedClock()
    clock.advance(MIDDAY)
    q = make(tmp_path, clock)
    q.reserve("joe", 1)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    clock.advance(0.05)
    assert synced == [] and len(clock.in_thread) == 1  # nothing blocked the reactor
    q._log.close()  # the file may close before the thread runs: the thread has its own fd
    assert len(synced) == 1  # close() syncs at once, in place
    f, args = clock.in_thread[0]
    f(*args)
    assert synced[1] == args[0]
    try:
        os.fstat(args[0])
        raise AssertionError("the thread's descriptor was left open")
    except OSError:
        pass
    assert make(tmp_path, Clock()).used("joe") == 1
