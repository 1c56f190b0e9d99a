"""The output queue under flood control: confirmation is never pushed back far (issue 13 item 1)
and one person's flood does not hold up everyone else (issue 13 item 3)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mup.commands import Commands, Dispatcher
from mup.commands.basic import echo
from mup.config import parse as parse_config
from mup.irc import IRCService


class Wire:
    """The IRC service and protocol on a StringTransport; a server that answers each PING
    at once (``auto_pong``) and remembers when each line went out."""

    def __init__(self, **irc: Any) -> None:
        irc.setdefault("channels", ["#ops"])
        irc.setdefault("ping_interval", 10_000.0)
        self.clock = Clock()
        self.config = parse_config({"irc": irc})
        self.service = IRCService(
            self.config, Dispatcher.from_config(Commands([echo()]), self.config, self.clock),
            self.clock)
        self.protocol = self.service.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.feed(":irc.test 001 mup :Welcome", ":mup!~mup@127.0.0.1 JOIN #ops",
                  ":irc.test 366 mup #ops :End")
        self.clock.advance(60)  # a full bucket
        self.transport.clear()
        self.log: list[tuple[float, str]] = []
        self.auto_pong = False

    def feed(self, *lines: str) -> None:
        for line in lines:
            self.protocol.dataReceived(line.encode() + b"\r\n")

    def collect(self) -> None:
        """Read what was written since last time; answer PINGs if ``auto_pong``."""
        data = self.transport.value()
        self.transport.clear()
        for line in data.decode().split("\r\n"):
            if not line:
                continue
            self.log.append((self.clock.seconds(), line))
            if self.auto_pong and line.startswith("PING "):
                self.feed(f":irc.test PONG irc.test :{line.split()[1]}")

    def run(self, seconds: float, step: float = 0.25) -> None:
        self.collect()
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.collect()


def test_a_backlog_is_confirmed_within_seconds_of_being_shown() -> None:
    """3 senders x 10 SMS at the default 1 line/s: every message shown is confirmed within a
    few seconds, so a kill -9 at any moment would show at most line_burst + 2 of them again."""
    wire = Wire()  # defaults: line_burst 5, line_rate 1
    wire.auto_pong = True
    done: dict[str, float] = {}
    for i in range(10):
        for sender in ("alice", "bob", "carol"):
            text = f"[SMS] <{sender}> m{i}"
            wire.service.deliver("#ops", text).addCallback(
                lambda _, text=text: done.setdefault(text, wire.clock.seconds()))
    wire.run(60)
    shown = {line.split(" :", 1)[1]: t for t, line in wire.log if line.startswith("PRIVMSG")}
    assert len(shown) == 30 and set(done) == set(shown)
    for text, t in shown.items():
        assert done[text] - t <= 3.5, text
    # At any moment (a kill -9), the lines shown but not yet confirmed:
    for moment, _ in wire.log:
        unconfirmed = [x for x, t in shown.items() if t <= moment and done[x] > moment]
        assert len(unconfirmed) <= wire.config.irc.line_burst + 2
    # Confirmation stays cheap: PINGs are shared, not one per message.
    pings = [line for _, line in wire.log if line.startswith("PING")]
    assert len(pings) <= 15


def test_confirming_ping_follows_within_a_few_lines_exact() -> None:
    """At 1 line/s the PING goes CONFIRM_SECONDS after the first line it confirms; the
    deliveries queued meanwhile share it."""
    wire = Wire(line_burst=1, line_rate=1.0)
    for i in range(6):
        wire.service.deliver("#ops", f"m{i}")
    wire.run(10)
    assert [line for _, line in wire.log] == [
        "PRIVMSG #ops :m0", "PRIVMSG #ops :m1", "PRIVMSG #ops :m2", "PING mup-1",
        "PRIVMSG #ops :m3", "PRIVMSG #ops :m4", "PRIVMSG #ops :m5", "PING mup-2"]
    assert [t for t, _ in wire.log] == [60, 61, 62, 63, 64, 65, 66, 67]


def test_pongs_fire_only_their_deliveries() -> None:
    wire = Wire(line_burst=1, line_rate=1.0)
    ds = [wire.service.deliver("#ops", f"m{i}") for i in range(6)]
    wire.run(10)
    wire.feed(":irc.test PONG irc.test :mup-1")
    assert [d.called for d in ds] == [True] * 3 + [False] * 3
    wire.feed(":irc.test PONG irc.test :mup-2")
    assert all(d.called for d in ds)


def test_an_innocent_user_is_answered_while_five_others_flood() -> None:
    """5 users send 50 @echo each (well within the per-user limit here), then a sixth asks
    once: the answer goes out within a turn of the lanes, not behind 250 lines."""
    wire = Wire(command_rate=0)  # no per-user limit: the queue alone must be fair
    for i in range(50):
        for n in range(5):
            wire.feed(f":flood{n}!f@h PRIVMSG #ops :@echo spam {n} {i}")
    wire.feed(":victim!v@h PRIVMSG #ops :@echo hello")
    wire.run(20)
    lines = [line for _, line in wire.log]
    index = lines.index("PRIVMSG #ops :victim: hello")
    assert index <= 5 + 6, lines[:index + 1]


def test_deliveries_are_their_own_lane() -> None:
    wire = Wire(command_rate=0)
    for i in range(20):
        wire.feed(f":flood!f@h PRIVMSG #ops :@echo spam {i}")
    d = wire.service.deliver("#ops", "[SMS] <alice> hi")
    wire.auto_pong = True
    wire.run(20)
    lines = [line for _, line in wire.log]
    assert lines.index("PRIVMSG #ops :[SMS] <alice> hi") <= 6
    assert d.called


def test_lost_connection_fails_queued_deliveries() -> None:
    from mup.irc import NotDelivered

    wire = Wire(line_burst=1, line_rate=1.0)
    ds = [wire.service.deliver("#ops", f"m{i}") for i in range(3)]
    wire.run(1)
    wire.protocol.connectionLost(Failure(ConnectionError("gone")))
    failures: list[Failure] = []
    for d in ds:
        d.addErrback(failures.append)
    assert len(failures) == 3 and all(f.check(NotDelivered) for f in failures)
