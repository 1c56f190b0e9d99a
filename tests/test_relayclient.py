"""The bot's puller, in memory: StubTreq against a real relay resource, task.Clock for the
long poll and the backoff, the store contract (FakeStore) on both sides."""

from __future__ import annotations

from typing import Any, TypeVar

from fixtures_inbound import FakeStore
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import Logger

from mup.relay import Relay
from mup.relayclient import RELAY_MARK, RelayPuller

TOKEN = "relay-secret"


class Side:
    """A relay (its own store) and a bot puller (its own store) on one Clock."""

    def __init__(self, token: str = TOKEN, window: int = 100, limit: int = 50) -> None:
        self.clock = Clock()
        self.relay_store = FakeStore()
        self.relay = Relay(self.relay_store, TOKEN, 30.0, self.clock)
        self.http = StubTreq(self.relay.resource())
        self.bot_store = FakeStore()
        self.wakes = 0
        self.events: list[dict] = []
        self.puller = self.make_puller(self.http, token, window=window, limit=limit)

    def make_puller(self, http: Any, token: str = TOKEN, **kw: Any) -> RelayPuller:
        puller = RelayPuller("http://relay.example/", token, self.bot_store, self.wake,
                             self.clock, http, poll_timeout=30.0, jitter=lambda: 1.0, **kw)
        puller.log = Logger(observer=self.events.append)
        return puller

    def wake(self) -> None:
        self.wakes += 1

    def accept(self, *ids: str) -> None:
        for i in ids:
            self.relay_store.append(f"kannel:{i}", {"kind": "sms", "id": i, "text": f"text {i}"})
        self.flush()

    def flush(self) -> None:
        for _ in range(5):
            self.http.flush()

    def run(self, seconds: int) -> None:
        """Let ``seconds`` pass a second at a time, the relay answering in between."""
        for _ in range(seconds):
            self.clock.advance(1)
            self.flush()

    def relay_backlog(self) -> int:
        return self.relay_store.backlog().result.count

    def bot_keys(self) -> list[str]:
        return [e.key for e in sorted(self.bot_store.entries.values(), key=lambda e: e.seq)]

    def deliver_all(self) -> None:
        """What delivery does once IRC confirmed each pending entry: mark done, then tell."""
        for entry in self.bot_store.pending().result:
            self.bot_store.mark_done([entry.seq])
            self.puller.delivered(entry)
        self.flush()

    def logged(self, level: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e["log_level"].name == level]


def test_pulled_messages_are_journaled_marked_and_woken_in_order() -> None:
    s = Side()
    s.accept("a", "b", "c")
    s.puller.startService()
    s.flush()
    assert s.bot_keys() == ["kannel:a", "kannel:b", "kannel:c"]
    record = s.bot_store.entries["kannel:b"].record
    assert record["text"] == "text b"
    assert record["extra"] == {RELAY_MARK: "kannel:b"}
    assert s.wakes >= 1
    assert s.puller.cursor == "e1-3"
    # Nothing acknowledged before IRC confirmed it.
    assert s.relay_store.done == set()
    s.puller.stopService()


def test_a_long_poll_brings_a_new_message_at_once() -> None:
    s = Side()
    s.puller.startService()
    s.flush()
    assert s.bot_keys() == []
    s.clock.advance(1)
    s.accept("late")
    assert s.bot_keys() == ["kannel:late"]
    s.puller.stopService()


def test_acks_are_sent_only_for_confirmed_relay_messages() -> None:
    s = Side()
    s.accept("a", "b")
    s.puller.startService()
    s.flush()
    first = s.bot_store.entries["kannel:a"]
    s.bot_store.mark_done([first.seq])
    s.puller.delivered(first)
    s.flush()
    assert s.relay_backlog() == 1
    assert [e.key for e in s.relay_store.pending().result] == ["kannel:b"]
    # An entry the bot's own webhook received is not the relay's business.
    webhook = s.bot_store.append("kannel:own", {"kind": "sms", "extra": {}}).result
    s.puller.delivered(webhook)
    s.deliver_all()
    assert s.relay_backlog() == 0
    assert s.puller.acked == 2
    s.puller.stopService()


def test_after_a_bot_restart_delivered_messages_are_acked_not_shown_again() -> None:
    """The bot confirmed `a` on IRC and died before the ack: the restarted bot pulls from the
    start, its store drops `a` (already there, done) and acks it; `b`, pending in the bot's
    store, is acknowledged when delivery confirms it."""
    s = Side()
    s.accept("a", "b")
    s.puller.startService()
    s.flush()
    a = s.bot_store.entries["kannel:a"]
    s.bot_store.mark_done([a.seq])  # confirmed on IRC ... and the process is killed
    s.puller.stopService()
    s.flush()
    restarted = s.make_puller(s.http)
    s.puller = restarted
    restarted.startService()
    s.flush()
    assert s.bot_keys() == ["kannel:a", "kannel:b"]  # nothing appended twice
    assert [e.key for e in s.relay_store.pending().result] == ["kannel:b"]
    s.deliver_all()
    assert s.relay_backlog() == 0
    restarted.stopService()


def test_an_expired_cursor_restarts_from_the_beginning_without_duplicates() -> None:
    s = Side()
    s.accept("a")
    s.puller.startService()
    s.flush()
    s.puller.stopService()  # the relay's store is replaced: the outstanding pull is cut off ...
    s.flush()
    s.relay_store.epoch = "e2"
    s.accept("b")
    s.puller.startService()  # ... and the next one comes with a cursor of the old epoch
    s.flush()
    assert s.bot_keys() == ["kannel:a", "kannel:b"]
    assert s.puller.cursor.startswith("e2-")
    assert any("expired cursor" in line for line in s.logged("info"))
    s.puller.stopService()


class Unreachable:
    """What treq gives when nothing listens: every request fails to connect."""

    def __init__(self) -> None:
        self.attempts: list[float] = []
        self.clock: Clock | None = None

    def request(self, method: str, url: str, **kw: Any) -> Any:
        self.attempts.append(kw["reactor"].seconds())
        return fail(ConnectionRefusedError("Connection was refused by other side: 111"))


def test_an_unreachable_relay_is_retried_with_backoff_and_logged_once() -> None:
    s = Side()
    down = Unreachable()
    puller = s.make_puller(down, min_delay=0.5, max_delay=8.0)
    puller.startService()
    for _ in range(40):
        s.clock.advance(1)
    gaps = [b - a for a, b in zip(down.attempts, down.attempts[1:], strict=False)]
    assert gaps[:6] == [1, 1, 2, 4, 8, 8]  # 0.5, 1, 2, 4, 8 rounded up to the 1 s ticks; capped
    warnings = s.logged("warn")
    assert len(warnings) == 1, warnings
    assert "ConnectionRefusedError" in warnings[0] and "backoff" in warnings[0]
    assert " unusable: " in puller.describe() and "ConnectionRefusedError" in puller.describe()
    # It comes back: one line says so, and the messages flow.
    s.accept("a")
    puller._http = s.http
    s.clock.advance(8)
    s.flush()
    assert s.bot_keys() == ["kannel:a"]
    assert puller.describe().endswith(": 1 pulled, 0 acknowledged, 1 waiting for IRC")
    infos = [line for line in s.logged("info") if "answering again" in line]
    assert len(infos) == 1 and "failed attempts" in infos[0]
    assert len(s.logged("warn")) == 1
    puller.stopService()


def test_a_wrong_token_is_logged_once_and_retried() -> None:
    s = Side(token="wrong")
    s.accept("a")
    s.puller.startService()
    s.run(30)
    assert s.bot_keys() == []
    (warning,) = s.logged("warn")
    assert "refused the token (401" in warning
    s.puller.stopService()


def test_the_window_holds_pulling_until_acks_come_back() -> None:
    s = Side(window=2, limit=2)
    s.accept("a", "b", "c")
    s.puller.startService()
    s.flush()
    assert s.bot_keys() == ["kannel:a", "kannel:b"]
    s.deliver_all()
    s.flush()
    assert s.bot_keys() == ["kannel:a", "kannel:b", "kannel:c"]
    s.puller.stopService()


def test_a_failed_journal_append_keeps_the_cursor_and_pulls_again() -> None:
    s = Side()
    s.accept("a")
    s.bot_store.broken = True
    s.puller.startService()
    s.flush()
    assert s.puller.cursor == ""
    assert s.bot_keys() == []
    s.bot_store.broken = False
    s.clock.advance(1)
    s.flush()
    assert s.bot_keys() == ["kannel:a"]
    assert s.puller.cursor == "e1-1"
    s.puller.stopService()


def test_stopping_cancels_the_outstanding_pull() -> None:
    s = Side()
    s.puller.startService()
    s.flush()
    assert len(s.relay._waiters) == 1
    s.puller.stopService()
    s.flush()
    assert s.relay._waiters == set()
    assert s.logged("critical") == [] and s.logged("error") == []


def test_a_cursor_the_relay_does_not_understand_is_dropped_not_retried_forever() -> None:
    s = Side()
    s.accept("a")
    s.puller.cursor = "e1-x9"  # not one of this relay's
    s.puller.startService()
    s.flush()
    assert s.bot_keys() == ["kannel:a"]
    assert s.logged("warn") == []
    assert any("garbled cursor" in line for line in s.logged("info"))
    s.puller.stopService()


# -- restarts of either side at any moment (hypothesis) ----------------------------------------

class Switch:
    """A root resource that forwards to whichever relay process is "running" now."""

    def __init__(self) -> None:
        from twisted.web.resource import Resource

        switch = self

        class Root(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                return switch.current.render(request)

        self.root = Root()
        self.current: Any = None


OPS = ["accept", "accept", "step", "step", "confirm", "tell", "restart_bot", "restart_relay",
       "new_epoch"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(OPS), max_size=30))
def test_restarts_of_either_side_lose_nothing_and_append_nothing_twice(ops: list[str]) -> None:
    s = Side()
    switch = Switch()
    epochs = iter(f"e{n}" for n in range(2, 100))

    def start_relay() -> None:
        s.relay = Relay(s.relay_store, TOKEN, 30.0, s.clock)
        switch.current = s.relay.resource()

    start_relay()
    s.http = StubTreq(switch.root)
    s.puller = s.make_puller(s.http)
    s.puller.startService()
    accepted: list[str] = []
    confirmed: list[Any] = []  # confirmed on IRC, delivery has not told the puller yet
    for op in ops:
        if op == "accept":
            accepted.append(f"m{len(accepted)}")
            s.accept(accepted[-1])
        elif op == "step":
            s.clock.advance(1)
            s.flush()
        elif op == "confirm":
            for entry in s.bot_store.pending().result:
                s.bot_store.mark_done([entry.seq])
                confirmed.append(entry)
        elif op == "tell":
            for entry in confirmed:
                s.puller.delivered(entry)
            confirmed.clear()
            s.flush()
        elif op == "restart_bot":  # kill -9: whatever was not sent is gone
            confirmed.clear()
            s.puller.stopService()
            s.puller = s.make_puller(s.http)
            s.puller.startService()
        elif op == "restart_relay":  # its store (and epoch) stays; its memory goes
            start_relay()
        elif op == "new_epoch":  # another store's cursors: the bot's is expired
            s.relay_store.epoch = next(epochs)
            start_relay()
    for entry in confirmed:  # delivery tells the puller right after the confirmation
        s.puller.delivered(entry)
    for _ in range(120):
        s.run(1)
        s.deliver_all()
        if s.relay_backlog() == 0 and len(s.bot_store.entries) == len(accepted):
            break
    assert sorted(s.bot_keys()) == sorted(f"kannel:{m}" for m in accepted)  # none lost
    assert [e.key for e in s.relay_store.pending().result] == []  # every one acknowledged
    s.puller.stopService()


class Flaky:
    """The relay through StubTreq, or refusing connections while ``down``."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.down = False

    def request(self, method: str, url: str, **kw: Any) -> Any:
        if self.down:
            return fail(ConnectionRefusedError("Connection was refused by other side: 111"))
        return self.http.request(method, url, **kw)


H = TypeVar("H", bound=Flaky)


def through(wrapper: type[H], **kw: Any) -> tuple[Side, H]:
    """A Side whose puller reaches the relay through ``wrapper``, started, with message a
    pulled."""
    s = Side()
    http = wrapper(s.http)
    s.puller = s.make_puller(http, **kw)
    s.accept("a")
    s.puller.startService()
    s.flush()
    return s, http


def test_when_one_loop_gets_through_the_other_stops_backing_off() -> None:
    s, flaky = through(Flaky, min_delay=1.0, max_delay=60.0)
    flaky.down = True
    s.deliver_all()  # the ack of a fails; the pull fails once the current long poll ends
    s.run(60)
    assert s.puller._failures >= 5 and len(s.puller._backoffs) == 2  # both loops back off
    s.accept("b")
    flaky.down = False
    while s.relay_backlog() == 2 and len(s.bot_keys()) == 1:  # until one loop gets through
        s.clock.advance(1)
        s.flush()
    # ... and the other did not sleep out its backoff: both are through at the same moment.
    s.flush()
    assert s.bot_keys() == ["kannel:a", "kannel:b"]
    assert s.relay_backlog() == 1
    s.puller.stopService()


class HeldAcks(Flaky):
    """Like Flaky, and while ``holding`` an acknowledgement waits for ``release`` (its answer
    was on its way when the relay went down)."""

    def __init__(self, http: Any) -> None:
        super().__init__(http)
        self.holding = False
        self.held: list[tuple[Deferred[Any], str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kw: Any) -> Any:
        if self.holding and url.endswith("/relay/ack"):
            d: Deferred[Any] = Deferred()
            self.held.append((d, method, url, kw))
            return d
        return super().request(method, url, **kw)

    def release(self) -> None:
        for d, method, url, kw in self.held:
            self.http.request(method, url, **kw).chainDeferred(d)
        self.held = []


def test_an_answer_sent_before_an_outage_does_not_end_it() -> None:
    """The relay answered an ack, then died; the bot reads that answer after its pull failed.
    The outage is still on: no "answering again", and no second warning when the next pull
    fails (CI saw three warnings for two outages)."""
    s, relay = through(HeldAcks, min_delay=1.0, max_delay=8.0)
    relay.holding = True
    s.deliver_all()  # the ack of a is on its way
    relay.down = True
    s.clock.advance(30)  # the long poll ends; the next pull is refused
    s.flush()
    assert len(s.logged("warn")) == 1
    relay.release()  # the answer to the ack comes in now
    s.flush()
    assert " unusable: " in s.puller.describe()
    s.run(10)
    assert len(s.logged("warn")) == 1, s.logged("warn")
    assert [line for line in s.logged("info") if "answering again" in line] == []
    s.accept("b")
    relay.down = relay.holding = False
    s.run(10)
    assert s.bot_keys() == ["kannel:a", "kannel:b"]
    assert len([line for line in s.logged("info") if "answering again" in line]) == 1
    assert len(s.logged("warn")) == 1
    s.puller.stopService()
