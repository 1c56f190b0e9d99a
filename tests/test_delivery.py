"""Delivery to IRC with a fake IRC core: format, sanitising, order, pipelining, waiting,
retries, hints."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures_inbound import JOE, NIEMEYER, FakeDirectory, FakeIRC, FakeStore
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mup.delivery import LINE_BYTES, Delivery, format_lines
from mup.gateway import DeliveryReport, InboundSMS, to_record
from mup.inboundrouter import Route, Router
from mup.irc import NotDelivered
from mup.replyroutes import ReplyRoutes
from mup.store.memory import MemoryStateStore

_sync = SynchronousTestCase()
N = "+447911123456"   # niemeyer's mobile
J = "+447911654321"   # joe's mobile
STRANGER = "+447911123999"


class DroppingIRC(FakeIRC):
    """FakeIRC as one connection to a server: first in, first shown (a delivery queues behind
    held ones; a PONG comes after the lines before it were shown), and the connection can
    drop as the IRC core's does: every held delivery fails with NotDelivered, though the
    server may have shown the first ``shown`` of them (their PONG was lost).
    ``confirmed`` lists the lines whose delivery was confirmed."""

    def __init__(self, present: tuple[str, ...] = ()) -> None:
        super().__init__(present)
        self.confirmed: list[tuple[str, str]] = []

    def deliver(self, target: str, lines, notice: bool = False) -> Deferred:
        lines = [lines] if isinstance(lines, str) else list(lines)

        def confirmed(result):
            self.confirmed += [(target, line) for line in lines]
            return result

        mode = self.mode
        if mode == "confirm" and self.held:
            self.mode = "hold"
        try:
            return super().deliver(target, lines, notice).addCallback(confirmed)
        finally:
            self.mode = mode

    def confirm(self, n: int | None = None) -> None:
        take = self.held if n is None else self.held[:n]
        self.held = [] if n is None else self.held[n:]
        for _d, target, lines in take:
            self.shown += [(target, line) for line in lines]
        for d, _target, _lines in take:
            d.callback(None)

    def drop(self, shown: int = 0) -> None:
        self.connected = False
        held, self.held = self.held, []
        for _d, target, lines in held[:shown]:
            self.shown += [(target, line) for line in lines]
        for d, _target, _lines in held:
            d.errback(NotDelivered("connection lost"))


class Harness:
    def __init__(self, tmp_path, journal=None, reports=None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = journal if journal is not None else FakeStore()
        self.irc = DroppingIRC(present=("alice",))
        self.routes = ReplyRoutes(MemoryStateStore(), 12 * 3600, self.clock)
        self.router = Router(channels=["#ops", "#dev"], default_channel="#ops",
                             unknown_senders="mask", region="GB",
                             directory=FakeDirectory([NIEMEYER, JOE]), routes=self.routes,
                             is_present=self.irc.is_present)
        self.acked: list = []
        self.delivery = Delivery(self.store, self.irc, self.router, clock=self.clock,
                                 reports=reports, on_delivered=self.acked.append, prefix="@")
        self.n = 0

    def start(self) -> None:
        self.delivery.startService()

    def post(self, sender: str, text: str, accept: bool = True):
        self.n += 1
        key, record = to_record(InboundSMS("kannel", f"m{self.n}", sender, "4242", text,
                                               self.clock.seconds()))
        entry = _sync.successResultOf(self.store.append(key, record))
        if accept:
            self.delivery.accept(entry)
        return entry

    def lines(self, target: str | None = None) -> list[str]:
        return [line for t, line in self.irc.shown if target is None or t == target]


@pytest.fixture
def h(tmp_path) -> Harness:
    h = Harness(tmp_path)
    h.start()
    return h


def test_channel_message_format_and_hint(h: Harness) -> None:
    entry = h.post(N, "#ops Flight delayed, there in 5.")
    assert h.irc.shown == [("#ops", "[SMS] <niemeyer> Flight delayed, there in 5."),
                           ("#ops", "Answer with: @sms niemeyer <message>")]
    assert h.store.done == {entry.seq} and h.acked == [entry]


def test_hint_once_per_conversation(h: Harness) -> None:
    h.post(N, "#ops one")
    h.post(N, "#ops two")
    h.post(N, "#dev three")
    assert h.lines("#ops") == ["[SMS] <niemeyer> one", "Answer with: @sms niemeyer <message>",
                               "[SMS] <niemeyer> two"]
    assert h.lines("#dev")[-1] == "Answer with: @sms niemeyer <message>"
    h.clock.advance(12 * 3600 + 1)
    h.post(N, "#ops four")
    assert h.lines("#ops")[-1] == "Answer with: @sms niemeyer <message>"


def test_unknown_sender_masked_and_no_hint(h: Harness) -> None:
    h.post(STRANGER, "hello?")
    assert h.irc.shown == [("#ops", "[SMS] <+44 **** **3999> hello?")]


@pytest.mark.parametrize("text, shown", [
    ("hi\r\nQUIT", ["[SMS] <niemeyer> hi", "[SMS] <niemeyer> QUIT"]),
    ("hi\rPRIVMSG #x :pwned", ["[SMS] <niemeyer> hi", "[SMS] <niemeyer> PRIVMSG #x :pwned"]),
    ("a\x00b\x01c\x02d\x03e\x1ff\x7fg", ["[SMS] <niemeyer> abcdefg"]),
    ("\u202eevil\u202c ok", ["[SMS] <niemeyer> evil ok"]),
    ("\n\n\r\n", ["[SMS] <niemeyer> (empty message)"]),
    ("tab\there", ["[SMS] <niemeyer> tab here"]),
    ("café 😀", ["[SMS] <niemeyer> café 😀"]),
])
def test_sanitised(h: Harness, text: str, shown: list[str]) -> None:
    h.post(N, "#ops " + text)
    assert h.lines("#ops")[:-1] == shown


def test_long_sms_split_over_lines(h: Harness) -> None:
    text = " ".join(f"word{i:03d}" for i in range(150))   # ~1200 characters
    h.post(N, "#ops " + text)
    lines = h.lines("#ops")[:-1]
    assert len(lines) >= 3
    assert all(line.startswith("[SMS] <niemeyer> ") for line in lines)
    assert all(len(line.encode()) <= LINE_BYTES for line in lines)
    assert " ".join(line.removeprefix("[SMS] <niemeyer> ") for line in lines) == text


def test_a_lane_that_breaks_is_tried_again(h: Harness, monkeypatch) -> None:
    import mup.delivery

    calls = []

    def broken(route, hint="", limit=0):
        calls.append(route.text)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(route, hint, limit)

    real = mup.delivery.format_lines
    monkeypatch.setattr(mup.delivery, "format_lines", broken)
    entry = h.post(N, "#ops after a bug")
    assert h.irc.shown == [] and h.store.done == set()
    h.clock.advance(h.delivery.max_backoff)
    assert h.lines("#ops")[0] == "[SMS] <niemeyer> after a bug"
    assert h.store.done == {entry.seq}


def test_mms_media_is_mentioned(h: Harness) -> None:
    key, record = to_record(InboundSMS("twilio", "MM1", N, "4242", "#ops look", 0.0,
                                           {"media": "2"}))
    h.delivery.accept(_sync.successResultOf(h.store.append(key, record)))
    assert h.lines("#ops")[:2] == ["[SMS] <niemeyer> look",
                                   "(with 2 picture(s) or other media, not shown here)"]


def test_private_and_reply_routes(h: Harness) -> None:
    h.irc.present.add("joe")
    h.post(N, "alice: can you call me")
    assert h.lines("alice")[0] == "[SMS] <niemeyer> can you call me"
    h.routes.record(STRANGER, "joe")
    h.post(STRANGER, "Yes, on my way")
    assert h.lines("joe") == ["[SMS] <+44 **** **3999> Yes, on my way"]


def test_waits_while_irc_is_down_then_in_order(h: Harness) -> None:
    h.irc.connected = False
    for i in range(3):
        h.post(N, f"#ops n{i}")
    h.post(J, "#ops j0")
    assert h.irc.shown == [] and h.store.done == set()
    h.irc.connect()
    assert [line for line in h.lines("#ops") if "n" in line.split("> ")[-1][:1]] == [
        "[SMS] <niemeyer> n0", "[SMS] <niemeyer> n1", "[SMS] <niemeyer> n2"]
    assert "[SMS] <joe> j0" in h.lines("#ops")
    assert len(h.store.done) == 4


def texts(pairs) -> list[str]:
    """The SMS texts in (target, line) pairs or held deliveries, without the sender."""
    lines = [p[-1][0] if isinstance(p[-1], list) else p[-1] for p in pairs]
    return [line.split("> ", 1)[1] for line in lines if line.startswith("[SMS]")]


def test_pipelined_per_sender_side_by_side_across_senders(h: Harness) -> None:
    h.irc.mode = "hold"
    h.post(N, "#ops n1")
    h.post(N, "#ops n2")
    h.post(J, "#ops j1")
    h.post(N, "#ops n3")
    # All handed to IRC before the first PONG, in order per sender.
    assert texts(h.irc.held) == ["n1", "n2", "j1", "n3"]
    assert h.store.done == set() and h.acked == []
    h.irc.confirm(2)
    assert h.store.done == {1, 2} and [e.seq for e in h.acked] == [1, 2]
    h.irc.confirm()
    assert h.store.done == {1, 2, 3, 4} and [e.seq for e in h.acked] == [1, 2, 3, 4]


def test_pipeline_is_bounded(h: Harness) -> None:
    h.delivery.pipeline = 3
    h.irc.mode = "hold"
    for i in range(5):
        h.post(N, f"#ops m{i}")
    assert texts(h.irc.held) == ["m0", "m1", "m2"]
    h.irc.confirm(1)
    assert texts(h.irc.held) == ["m1", "m2", "m3"]
    h.irc.confirm(2)
    assert texts(h.irc.held) == ["m3", "m4"]
    assert h.delivery.waiting == 2


def test_done_and_on_delivered_in_order_each_once_confirmed(h: Harness) -> None:
    h.irc.mode = "hold"
    e1, e2, e3 = (h.post(N, f"#ops m{i}") for i in range(3))
    h.irc.held[1][0].callback(None)   # m1's confirmation first (not what a server does)
    assert h.store.done == set() and h.acked == []
    h.irc.held[0][0].callback(None)
    assert h.store.done == {e1.seq, e2.seq} and h.acked == [e1, e2]
    h.irc.held[2][0].callback(None)
    assert h.acked == [e1, e2, e3]


def test_drop_mid_pipeline_resends_the_unconfirmed_in_order(h: Harness) -> None:
    h.irc.mode = "hold"
    entries = [h.post(N, f"#ops m{i}") for i in range(5)]
    h.post(J, "#ops j0")
    h.irc.confirm(1)                  # m0 confirmed
    h.irc.drop(shown=2)               # m1 and m2 reached the channel, their PONG did not
    assert h.store.done == {entries[0].seq} and h.acked == [entries[0]]
    h.post(N, "#ops m5")              # newer: must come after every resent one
    h.irc.attempts.clear()
    h.clock.advance(0.5)
    assert h.irc.attempts == []       # still down
    h.irc.connect()
    sent = texts((t, lines) for t, lines in h.irc.attempts)
    assert [t for t in sent if t != "j0"] == ["m1", "m2", "m3", "m4", "m5"] and "j0" in sent
    assert h.store.done == {entries[0].seq}
    h.irc.confirm()
    assert [e.record["text"] for e in h.acked if e.record["from"] == N] == [
        f"#ops m{i}" for i in range(6)]
    assert [t for t in texts(h.irc.confirmed) if t != "j0"] == [f"m{i}" for i in range(6)]
    assert len(h.store.done) == 7


def test_not_waiting_for_the_journal_fsync(h: Harness) -> None:
    fsyncs: list[Deferred] = []

    def mark_done(seq: int) -> Deferred:
        h.store.done.add(seq)
        fsyncs.append(Deferred())
        return fsyncs[-1]

    h.store.mark_done = mark_done
    entries = [h.post(N, f"#ops m{i}") for i in range(3)]
    assert texts(h.irc.shown) == ["m0", "m1", "m2"] and h.acked == entries
    assert not any(d.called for d in fsyncs)


def test_another_target_waits_until_the_earlier_ones_are_confirmed(h: Harness) -> None:
    h.irc.mode = "hold"
    h.post(N, "#ops a")
    h.post(N, "#ops b")
    h.post(N, "#dev c")
    assert texts(h.irc.held) == ["a", "b"]
    h.irc.confirm(1)
    assert texts(h.irc.held) == ["b"]
    h.irc.confirm(1)
    assert texts(h.irc.held) == ["c"]


def test_refused_mid_pipeline_falls_back_in_order(h: Harness) -> None:
    h.routes.record(STRANGER, "not a nick")
    h.irc.present.add("not a nick")   # its deliver refuses the target
    h.irc.mode = "hold"
    h.post(STRANGER, "#ops before")
    h.post(STRANGER, "one")
    h.post(STRANGER, "two")
    while h.irc.held:
        h.irc.confirm()
    assert h.lines("#ops") == [
        "[SMS] <+44 **** **3999> before",
        "[SMS] <+44 **** **3999> one", "(for not a nick, who cannot be messaged)",
        "[SMS] <+44 **** **3999> two", "(for not a nick, who cannot be messaged)"]
    assert len(h.acked) == 3


def test_not_delivered_is_retried_and_not_marked_done(h: Harness) -> None:
    h.irc.mode = "fail"
    entry = h.post(N, "#ops retry me")
    assert len(h.irc.attempts) == 1 and h.store.done == set()
    h.clock.advance(0.5)
    assert len(h.irc.attempts) == 2
    h.clock.advance(1)
    assert len(h.irc.attempts) == 3 and h.store.done == set()
    h.irc.mode = "confirm"
    h.clock.advance(2)
    assert h.lines("#ops")[0] == "[SMS] <niemeyer> retry me"
    assert h.store.done == {entry.seq}


def test_backlog_from_before_is_delivered_at_start(tmp_path) -> None:
    h = Harness(tmp_path)
    h.post(N, "#ops old one", accept=False)
    h.post(J, "#ops old two", accept=False)
    assert h.irc.shown == []
    h.start()
    assert h.lines("#ops")[0::2] == ["[SMS] <niemeyer> old one", "[SMS] <joe> old two"]


def test_a_large_backlog_is_read_a_page_at_a_time_in_order(tmp_path, monkeypatch) -> None:
    import mup.delivery

    monkeypatch.setattr(mup.delivery, "PAGE", 5)
    h = Harness(tmp_path)
    reads: list[tuple[int, int | None]] = []
    pending = h.store.pending

    def paged(after: int = 0, limit: int | None = None) -> Any:
        reads.append((after, limit))
        return pending(after, limit)

    h.store.pending = paged
    for i in range(12):
        h.post(N if i % 2 else J, f"#ops old {i}", accept=False)
    h.start()
    assert reads == [(0, 5), (5, 5), (10, 5)]
    shown = [line for line in h.lines("#ops") if line.startswith("[SMS]")]
    assert [line.rsplit(" ", 1)[1] for line in shown if "<joe>" in line] == [
        str(i) for i in range(0, 12, 2)]
    assert len(shown) == 12


def test_a_post_accepted_while_the_backlog_is_read_waits_its_turn(tmp_path) -> None:
    """After a restart the backlog is read from the store (a thread); a sender's new post
    accepted meanwhile must not be shown before their older waiting ones (seen as an order
    failure in test_crash)."""
    h = Harness(tmp_path)
    h.post(N, "#ops old one", accept=False)
    h.post(N, "#ops old two", accept=False)
    pending = h.store.pending
    held: list[Deferred] = []

    def later(after: int = 0, limit: int | None = None) -> Any:
        d: Deferred = Deferred()
        held.append(d)
        d.addCallback(lambda _: _sync.successResultOf(pending(after, limit)))
        return d

    h.store.pending = later
    h.start()
    h.post(N, "#ops new one")          # accepted while the first read has not returned
    assert h.lines("#ops") == []
    while held:
        held.pop(0).callback(None)
    assert [line for line in h.lines("#ops") if line.startswith("[SMS]")] == [
        "[SMS] <niemeyer> old one", "[SMS] <niemeyer> old two", "[SMS] <niemeyer> new one"]


def test_wake_finds_entries_appended_by_others_once(h: Harness) -> None:
    e1 = h.post(N, "#ops via relay", accept=False)
    h.delivery.wake()
    h.delivery.wake()
    h.clock.advance(0)
    h.delivery.accept(e1)   # the same entry again: not shown twice
    h.delivery.wake()
    h.clock.advance(0)
    assert h.lines("#ops").count("[SMS] <niemeyer> via relay") == 1


def test_reports_go_to_the_sender_best_effort(tmp_path) -> None:
    told = []

    def reports(report: DeliveryReport):
        told.append(report)
        return ("joe", "SMS to niemeyer delivered.") if report.state == "delivered" else None

    h = Harness(tmp_path, reports=reports)
    h.start()
    for status, state in (("8", "pending"), ("1", "delivered")):
        key, record = to_record(DeliveryReport("kannel", "ref1", state), status)
        h.delivery.accept(_sync.successResultOf(h.store.append(key, record)))
    assert [r.state for r in told] == ["pending", "delivered"]
    assert h.irc.shown == [("joe", "SMS to niemeyer delivered.")]
    assert len(h.store.done) == 2


def test_report_gives_up_after_a_few_tries(tmp_path) -> None:
    h = Harness(tmp_path, reports=lambda r: ("joe", "SMS to niemeyer delivered."))
    h.start()
    h.irc.mode = "fail"
    key, record = to_record(DeliveryReport("kannel", "ref1", "delivered"), "1")
    h.delivery.accept(_sync.successResultOf(h.store.append(key, record)))
    h.clock.pump([1, 2, 4])
    assert len(h.irc.attempts) == 3 and len(h.store.done) == 1


def test_unreadable_record_is_skipped(h: Harness) -> None:
    entry = _sync.successResultOf(h.store.append("x:1", {"kind": "weird"}))
    h.delivery.accept(entry)
    assert h.irc.shown == [] and h.store.done == {entry.seq}


def test_dropped_sender_is_marked_done(h: Harness) -> None:
    h.router.unknown_senders = "drop"
    entry = h.post(STRANGER, "#ops spam")
    assert h.irc.attempts == [] and h.store.done == {entry.seq}


def test_stop_while_waiting_for_irc(h: Harness) -> None:
    h.irc.connected = False
    h.post(N, "#ops later")
    h.delivery.stopService()
    h.irc.connect()
    assert h.irc.shown == [] and h.store.done == set()


def test_note_for_unknown_channel() -> None:
    lines = format_lines(Route("#ops", "#random hi", "niemeyer", "niemeyer",
                               note="(sent to #random, which is not one of my channels)"))
    assert lines == ["[SMS] <niemeyer> #random hi",
                     "(sent to #random, which is not one of my channels)"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000), st.integers(min_value=60, max_value=500))
def test_format_lines_are_always_safe(text: str, limit: int) -> None:
    lines = format_lines(Route("#ops", text, "x\r\ny", "x"), "hint\n", limit)
    for line in lines:
        assert not any(c in line for c in "\r\n\0")
        assert len(line.encode("utf-8")) <= max(limit, 40 + len("[SMS] <x y> "))
    assert lines


def test_target_irc_refuses_goes_to_the_default_channel(h: Harness) -> None:
    h.routes.record(STRANGER, "not a nick")
    h.irc.present.add("not a nick")   # as if IRC said so; its deliver refuses the target
    entry = h.post(STRANGER, "hello")
    assert h.lines("#ops") == ["[SMS] <+44 **** **3999> hello",
                               "(for not a nick, who cannot be messaged)"]
    assert h.store.done == {entry.seq}


# With the real store: what IRC did not confirm before a crash is shown after it, once.

def test_real_store_redelivers_only_what_was_unconfirmed(tmp_path) -> None:
    from mup.store.sqlite import SQLiteMessageStore

    def backlog(store) -> int:
        d = store.backlog()
        clock.advance(0)
        return _sync.successResultOf(d).count

    def pending(store) -> list:
        d = store.pending()
        clock.advance(0)
        return _sync.successResultOf(d)

    clock = Clock()
    store = SQLiteMessageStore.open(str(tmp_path / "journal"), clock)
    h = Harness(tmp_path, journal=store)
    h.clock = clock
    h.delivery.clock = clock
    h.start()
    h.irc.mode = "hold"
    entries = []
    for i in range(4):
        key, record = to_record(InboundSMS("kannel", f"id{i}", N if i < 3 else J, "4242",
                                           f"#ops m{i}", clock.seconds()))
        d = store.append(key, record)
        clock.advance(0)
        entries.append(_sync.successResultOf(d))
        h.delivery.accept(entries[-1])
    duplicate = store.append(key, record)   # a retried post
    clock.advance(0)
    assert _sync.successResultOf(duplicate) is None
    h.irc.confirm(1)          # m0 confirmed (and marked done)
    clock.advance(0)
    assert backlog(store) == 3
    # m1, m2 (niemeyer, pipelined) and m3 (joe) are in flight: crash now.
    survivors = SQLiteMessageStore.open(str(tmp_path / "journal"), clock)
    assert [e.record["text"] for e in pending(survivors)] == ["#ops m1", "#ops m2", "#ops m3"]
    h2 = Harness(tmp_path, journal=survivors)
    h2.delivery.clock = clock
    h2.start()
    clock.advance(0)
    assert [line for line in h2.lines("#ops") if line.startswith("[SMS]")] == [
        "[SMS] <niemeyer> m1", "[SMS] <niemeyer> m2", "[SMS] <joe> m3"]
    clock.advance(0)
    assert backlog(survivors) == 0
    third = SQLiteMessageStore.open(str(tmp_path / "journal"), clock)
    assert pending(third) == []
    for s in (store, survivors, third):
        s.close()


# Property: whatever IRC does (down, failing, slow, dropping the connection mid-pipeline),
# every message is shown, in order per sender, marked done only once its delivery was
# confirmed, and handed to on_delivered once, in order per sender.

posts = st.tuples(st.just("post"), st.integers(0, 2), st.sampled_from(["#ops", "#ops", "#dev"]))
events = st.lists(st.one_of(
    posts, posts, posts,
    st.tuples(st.just("irc"), st.sampled_from(["down", "up", "fail", "confirm", "hold"])),
    st.tuples(st.just("confirm"), st.integers(1, 3)),
    st.tuples(st.just("drop"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("time"), st.floats(0, 5)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 4), st.sampled_from(["confirm", "hold"]))
@example(script=[("post", 0, "#ops")] * 3 + [("drop", 0, True), ("post", 0, "#ops")],
         pipeline=4, mode="hold")   # the newer one must not overtake those sent again
def test_property_every_message_shown_in_order_per_sender(tmp_path_factory, script,
                                                           pipeline, mode) -> None:
    h = Harness(tmp_path_factory.mktemp("p"))
    h.delivery.pipeline = pipeline
    h.irc.mode = mode
    h.start()
    senders = [N, J, STRANGER]
    posted: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for kind, arg, *more in script:
        if kind == "post":
            text = f"m{len(posted[arg])}"
            posted[arg].append(text)
            h.post(senders[arg], f"{more[0]} s{arg} {text}")
        elif kind == "irc":
            if arg == "down":
                h.irc.connected = False
            elif arg == "up":
                h.irc.connect()
            else:
                if arg == "confirm" and h.irc.held:
                    h.irc.confirm()
                h.irc.mode = arg
        elif kind == "confirm":
            h.irc.confirm(arg)
        elif kind == "drop":
            h.irc.drop(shown=arg)
            if more[0]:   # and connected again at once
                h.irc.connect()
        else:
            h.clock.advance(arg)
        # Marked done only once its delivery was confirmed.
        confirmed = set(texts(h.irc.confirmed))
        for entry in h.store.entries.values():
            if entry.seq in h.store.done:
                assert entry.record["text"].split(" ", 1)[1] in confirmed
    # Let everything through.
    h.irc.mode = "confirm"
    h.irc.connect()
    for _ in range(30):
        h.irc.confirm()
        h.clock.advance(30)
    shown = texts(h.irc.shown)
    for n, sent in posted.items():
        firsts = list(dict.fromkeys(t.split(" ", 1)[1] for t in shown if t.startswith(f"s{n} ")))
        assert firsts == sent
        acked = [e.record["text"].split(" ", 2)[2] for e in h.acked
                 if e.record["from"] == senders[n]]
        assert acked == sent
    assert len(h.store.done) == sum(map(len, posted.values()))


# With the real IRC protocol on a StringTransport: the pipeline shares PINGs behind flood
# control, and a connection lost mid-pipeline has the unconfirmed messages sent again.

class Wire:
    """mup's IRCService and IRCProtocol on StringTransports, one per connection."""

    def __init__(self, **irc) -> None:
        from mup.config import parse as parse_config
        from mup.irc import IRCService

        self.clock = Clock()
        config = parse_config({"irc": {"channels": ["#ops"], "ping_interval": 10_000.0, **irc}})
        self.service = IRCService(config, None, self.clock)
        self.connect()
        self.sent()

    def connect(self) -> None:
        from twisted.internet.testing import StringTransport

        self.protocol = self.service.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.feed(":irc.test 001 mup :Welcome", ":mup!~mup@127.0.0.1 JOIN #ops",
                  ":irc.test 366 mup #ops :End")

    def feed(self, *lines: str) -> None:
        for line in lines:
            self.protocol.dataReceived(line.encode() + b"\r\n")

    def sent(self) -> list[str]:
        data = self.transport.value()
        self.transport.clear()
        return [line for line in data.decode().split("\r\n") if line]

    def pong(self, ping: str) -> None:
        self.feed(f":irc.test PONG irc.test :{ping.split()[1]}")

    def lose(self) -> None:
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionError("gone")))


def wire_delivery(tmp_path, wire: Wire) -> tuple[Delivery, FakeStore, list]:
    router = Router(channels=["#ops"], default_channel="#ops", unknown_senders="mask",
                    region="GB", directory=FakeDirectory([NIEMEYER, JOE]),
                    routes=ReplyRoutes(MemoryStateStore(), 12 * 3600, wire.clock),
                    is_present=wire.service.is_present)
    journal, acked = FakeStore(), []
    delivery = Delivery(journal, wire.service, router, clock=wire.clock, hint=False,
                        on_delivered=acked.append)
    delivery.startService()
    return delivery, journal, acked


def wire_post(delivery: Delivery, journal: FakeStore, clock: Clock, text: str):
    key, record = to_record(InboundSMS("kannel", text, N, "4242", f"#ops {text}",
                                           clock.seconds()))
    entry = _sync.successResultOf(journal.append(key, record))
    delivery.accept(entry)
    return entry


def test_real_protocol_pipelined_messages_share_one_ping(tmp_path) -> None:
    wire = Wire(line_burst=3, line_rate=1.0)
    wire.clock.advance(10)   # a full bucket
    delivery, journal, acked = wire_delivery(tmp_path, wire)
    entries = [wire_post(delivery, journal, wire.clock, f"m{i}") for i in range(5)]
    wire.clock.pump([1.0] * 5)
    lines = wire.sent()
    assert [line for line in lines if line.startswith("PRIVMSG")] == [
        f"PRIVMSG #ops :[SMS] <niemeyer> m{i}" for i in range(5)]
    # m0 and its PING went at once; m1..m3 queued behind the flood control share one PING,
    # sent no later than ircqueue.CONFIRM_SECONDS after m1 (so m4 gets its own).
    pings = [line for line in lines if line.startswith("PING")]
    assert len(pings) == 3 and lines[-1] == pings[-1] and journal.done == set()
    wire.pong(pings[0])
    assert acked == entries[:1]
    wire.pong(pings[1])
    assert acked == entries[:4]
    wire.pong(pings[2])
    assert journal.done == {e.seq for e in entries} and acked == entries


def test_real_protocol_connection_lost_mid_pipeline(tmp_path) -> None:
    wire = Wire(line_rate=0)
    delivery, journal, acked = wire_delivery(tmp_path, wire)
    entries = [wire_post(delivery, journal, wire.clock, f"m{i}") for i in range(4)]
    lines = wire.sent()
    assert [line for line in lines if line.startswith("PRIVMSG")] == [
        f"PRIVMSG #ops :[SMS] <niemeyer> m{i}" for i in range(4)]   # before any PONG
    pings = [line for line in lines if line.startswith("PING")]
    wire.pong(pings[0])
    assert journal.done == {entries[0].seq} and acked == entries[:1]
    wire.lose()
    newer = wire_post(delivery, journal, wire.clock, "m4")
    wire.clock.advance(1)
    assert journal.done == {entries[0].seq}
    wire.connect()
    wire.clock.advance(0)
    lines = wire.sent()
    assert [line for line in lines if line.startswith("PRIVMSG")] == [
        f"PRIVMSG #ops :[SMS] <niemeyer> m{i}" for i in range(1, 5)]
    assert journal.done == {entries[0].seq}
    for ping in [line for line in lines if line.startswith("PING")]:
        wire.pong(ping)
    assert acked == [*entries, newer] and len(journal.done) == 5
