"""Delivery to IRC with a fake IRC core: format, sanitising, order, waiting, retries, hints."""

from __future__ import annotations

import pytest
from fixtures_inbound import JOE, NIEMEYER, FakeDirectory, FakeIRC, FakeJournal
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mup.delivery import LINE_BYTES, Delivery, format_lines
from mup.gateway import DeliveryReport, InboundSMS
from mup.gateways.inbound import journal_entry
from mup.routes import ReplyRoutes
from mup.routing import Route, Router

_sync = SynchronousTestCase()
N = "+447911123456"   # niemeyer's mobile
J = "+447911654321"   # joe's mobile
STRANGER = "+447911123999"


class Harness:
    def __init__(self, tmp_path, journal=None, reports=None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.journal = journal if journal is not None else FakeJournal()
        self.irc = FakeIRC(present=("alice",))
        self.routes = ReplyRoutes(str(tmp_path), 12 * 3600, self.clock)
        self.router = Router(channels=["#ops", "#dev"], default_channel="#ops",
                             unknown_senders="mask", region="GB",
                             directory=FakeDirectory([NIEMEYER, JOE]), routes=self.routes,
                             is_present=self.irc.is_present)
        self.acked: list = []
        self.delivery = Delivery(self.journal, self.irc, self.router, clock=self.clock,
                                 reports=reports, on_delivered=self.acked.append, prefix="@")
        self.n = 0

    def start(self) -> None:
        self.delivery.startService()

    def post(self, sender: str, text: str, accept: bool = True):
        self.n += 1
        key, record = journal_entry(InboundSMS("kannel", f"m{self.n}", sender, "4242", text,
                                               self.clock.seconds()))
        entry = _sync.successResultOf(self.journal.append(key, record))
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
    assert h.journal.done == {entry.seq} and h.acked == [entry]


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
    assert h.irc.shown == [("#ops", "[SMS] <+44 79** ***999> hello?")]


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
    assert h.irc.shown == [] and h.journal.done == set()
    h.clock.advance(h.delivery.max_backoff)
    assert h.lines("#ops")[0] == "[SMS] <niemeyer> after a bug"
    assert h.journal.done == {entry.seq}


def test_mms_media_is_mentioned(h: Harness) -> None:
    key, record = journal_entry(InboundSMS("twilio", "MM1", N, "4242", "#ops look", 0.0,
                                           {"media": "2"}))
    h.delivery.accept(_sync.successResultOf(h.journal.append(key, record)))
    assert h.lines("#ops")[:2] == ["[SMS] <niemeyer> look",
                                   "(with 2 picture(s) or other media, not shown here)"]


def test_private_and_reply_routes(h: Harness) -> None:
    h.irc.present.add("joe")
    h.post(N, "alice: can you call me")
    assert h.lines("alice")[0] == "[SMS] <niemeyer> can you call me"
    h.routes.record(STRANGER, "joe")
    h.post(STRANGER, "Yes, on my way")
    assert h.lines("joe") == ["[SMS] <+44 79** ***999> Yes, on my way"]


def test_waits_while_irc_is_down_then_in_order(h: Harness) -> None:
    h.irc.connected = False
    for i in range(3):
        h.post(N, f"#ops n{i}")
    h.post(J, "#ops j0")
    assert h.irc.shown == [] and h.journal.done == set()
    h.irc.connect()
    assert [line for line in h.lines("#ops") if "n" in line.split("> ")[-1][:1]] == [
        "[SMS] <niemeyer> n0", "[SMS] <niemeyer> n1", "[SMS] <niemeyer> n2"]
    assert "[SMS] <joe> j0" in h.lines("#ops")
    assert len(h.journal.done) == 4


def test_one_at_a_time_per_sender_side_by_side_across_senders(h: Harness) -> None:
    h.irc.mode = "hold"
    h.post(N, "#ops n1")
    h.post(N, "#ops n2")
    h.post(J, "#ops j1")
    assert [lines[0] for _, _, lines in h.irc.held] == ["[SMS] <niemeyer> n1", "[SMS] <joe> j1"]
    h.irc.confirm(1)
    assert [lines[0] for _, _, lines in h.irc.held] == ["[SMS] <joe> j1", "[SMS] <niemeyer> n2"]
    h.irc.confirm()
    assert len(h.journal.done) == 3


def test_not_delivered_is_retried_and_not_marked_done(h: Harness) -> None:
    h.irc.mode = "fail"
    entry = h.post(N, "#ops retry me")
    assert len(h.irc.attempts) == 1 and h.journal.done == set()
    h.clock.advance(0.5)
    assert len(h.irc.attempts) == 2
    h.clock.advance(1)
    assert len(h.irc.attempts) == 3 and h.journal.done == set()
    h.irc.mode = "confirm"
    h.clock.advance(2)
    assert h.lines("#ops")[0] == "[SMS] <niemeyer> retry me"
    assert h.journal.done == {entry.seq}


def test_backlog_from_before_is_delivered_at_start(tmp_path) -> None:
    h = Harness(tmp_path)
    h.post(N, "#ops old one", accept=False)
    h.post(J, "#ops old two", accept=False)
    assert h.irc.shown == []
    h.start()
    assert h.lines("#ops")[0::2] == ["[SMS] <niemeyer> old one", "[SMS] <joe> old two"]


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
        key, record = journal_entry(DeliveryReport("kannel", "ref1", state), status)
        h.delivery.accept(_sync.successResultOf(h.journal.append(key, record)))
    assert [r.state for r in told] == ["pending", "delivered"]
    assert h.irc.shown == [("joe", "SMS to niemeyer delivered.")]
    assert len(h.journal.done) == 2


def test_report_gives_up_after_a_few_tries(tmp_path) -> None:
    h = Harness(tmp_path, reports=lambda r: ("joe", "SMS to niemeyer delivered."))
    h.start()
    h.irc.mode = "fail"
    key, record = journal_entry(DeliveryReport("kannel", "ref1", "delivered"), "1")
    h.delivery.accept(_sync.successResultOf(h.journal.append(key, record)))
    h.clock.pump([1, 2, 4])
    assert len(h.irc.attempts) == 3 and len(h.journal.done) == 1


def test_unreadable_record_is_skipped(h: Harness) -> None:
    entry = _sync.successResultOf(h.journal.append("x:1", {"kind": "weird"}))
    h.delivery.accept(entry)
    assert h.irc.shown == [] and h.journal.done == {entry.seq}


def test_dropped_sender_is_marked_done(h: Harness) -> None:
    h.router.unknown_senders = "drop"
    entry = h.post(STRANGER, "#ops spam")
    assert h.irc.attempts == [] and h.journal.done == {entry.seq}


def test_stop_while_waiting_for_irc(h: Harness) -> None:
    h.irc.connected = False
    h.post(N, "#ops later")
    h.delivery.stopService()
    h.irc.connect()
    assert h.irc.shown == [] and h.journal.done == set()


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
    assert h.lines("#ops") == ["[SMS] <+44 79** ***999> hello",
                               "(for not a nick, who cannot be messaged)"]
    assert h.journal.done == {entry.seq}


# With the real journal: what IRC did not confirm before a crash is shown after it, once.

def test_real_journal_redelivers_only_what_was_unconfirmed(tmp_path) -> None:
    from mup.journal import Journal

    clock = Clock()
    journal = Journal.open(str(tmp_path / "journal"), reactor=clock)
    h = Harness(tmp_path, journal=journal)
    h.clock = clock
    h.delivery.clock = clock
    h.start()
    h.irc.mode = "hold"
    entries = []
    for i in range(4):
        key, record = journal_entry(InboundSMS("kannel", f"id{i}", N if i < 3 else J, "4242",
                                               f"#ops m{i}", clock.seconds()))
        d = journal.append(key, record)
        clock.advance(0)
        entries.append(_sync.successResultOf(d))
        h.delivery.accept(entries[-1])
    duplicate = journal.append(key, record)   # a retried post
    clock.advance(0)
    assert _sync.successResultOf(duplicate) is None
    h.irc.confirm(1)          # m0 confirmed (and marked done)
    clock.advance(0)
    assert journal.backlog == 3
    # m1 (niemeyer) and m3 (joe) are in flight, m2 waits behind m1: crash now.
    survivors = Journal.open(str(tmp_path / "journal"), reactor=clock)
    assert [e.record["text"] for e in survivors.pending()] == ["#ops m1", "#ops m2", "#ops m3"]
    h2 = Harness(tmp_path, journal=survivors)
    h2.delivery.clock = clock
    h2.start()
    clock.advance(0)
    assert [line for line in h2.lines("#ops") if line.startswith("[SMS]")] == [
        "[SMS] <niemeyer> m1", "[SMS] <joe> m3", "[SMS] <niemeyer> m2"]
    clock.advance(0)
    assert survivors.backlog == 0
    third = Journal.open(str(tmp_path / "journal"), reactor=clock)
    assert third.pending() == []


# Property: whatever IRC does (down, failing, slow), every message is shown, in order per
# sender, and marked done only once shown.

events = st.lists(st.one_of(
    st.tuples(st.just("post"), st.integers(0, 2)),
    st.tuples(st.just("irc"), st.sampled_from(["down", "up", "fail", "confirm", "hold"])),
    st.tuples(st.just("confirm"), st.integers(1, 3)),
    st.tuples(st.just("time"), st.floats(0, 5)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(events)
def test_property_every_message_shown_in_order_per_sender(tmp_path_factory, script) -> None:
    h = Harness(tmp_path_factory.mktemp("p"))
    h.start()
    senders = [N, J, STRANGER]
    posted: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for kind, arg in script:
        if kind == "post":
            text = f"m{len(posted[arg])}"
            posted[arg].append(text)
            h.post(senders[arg], f"#ops s{arg} {text}")
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
        else:
            h.clock.advance(arg)
        # Marked done only once shown.
        shown_keys = {line.split("> ", 1)[1] for _, line in h.irc.shown if "> " in line}
        for entry in h.journal.entries.values():
            if entry.seq in h.journal.done:
                text = entry.record["text"].removeprefix("#ops ")
                assert text in shown_keys
    # Let everything through.
    h.irc.mode = "confirm"
    h.irc.connect()
    for _ in range(30):
        h.irc.confirm()
        h.clock.advance(30)
    shown = [line.split("> ", 1)[1] for _, line in h.irc.shown if line.startswith("[SMS]")]
    for n, texts in posted.items():
        firsts = list(dict.fromkeys(t.split(" ", 1)[1] for t in shown if t.startswith(f"s{n} ")))
        assert firsts == texts
    assert len(h.journal.done) == sum(map(len, posted.values()))
