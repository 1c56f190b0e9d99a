"""The IRC protocol driven line by line: StringTransport for the wire, task.Clock for time."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mup.commands import Command, Commands, Dispatcher, Request
from mup.commands.basic import echo
from mup.config import parse as parse_config
from mup.irc import IRCService, NotDelivered, retry_policy

HOSTMASK = "mup!~mup@127.0.0.1"


class Bot:
    """One protocol on a StringTransport, with helpers to feed lines and read what it sent."""

    def __init__(self, commands: list[Command] | None = None, **irc: Any) -> None:
        irc.setdefault("channels", ["#ops"])
        irc.setdefault("ping_interval", 10_000.0)  # no keepalive PINGs unless a test wants them
        self.config = parse_config({"irc": irc})
        self.clock = Clock()
        self.requests: list[Request] = []
        self.service = IRCService(
            self.config, Dispatcher.from_config(Commands([echo(), *(commands or [])]),
                                                self.config, self.clock), self.clock)
        self.protocol = self.service.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def feed(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode()
            self.protocol.dataReceived(data + b"\r\n")

    def sent(self) -> list[str]:
        data = self.transport.value()
        self.transport.clear()
        return [line for line in data.decode().split("\r\n") if line]

    def register(self) -> None:
        self.feed(":irc.test 001 mup :Welcome", f":{HOSTMASK} JOIN #ops",
                  ":irc.test 353 mup = #ops :mup @alice bob", ":irc.test 366 mup #ops :End")
        self.sent()

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("gone")))


def test_registration_lines() -> None:
    bot = Bot(password="sekrit", username="mupu", realname="The Bot")
    assert bot.sent() == ["PASS sekrit", "CAP LS 302", "NICK mup", "USER mupu 0 * :The Bot"]


def test_server_without_cap_registers_and_joins() -> None:
    bot = Bot(channels=["#ops", "#dev"])
    bot.sent()
    ready = bot.service.when_connected()
    bot.feed(":irc.test 421 * CAP :Unknown command", ":irc.test 001 mup :Welcome")
    assert bot.sent() == ["JOIN #ops", "JOIN #dev"]
    assert not ready.called and not bot.service.connected
    bot.feed(f":{HOSTMASK} JOIN #ops")
    assert not ready.called
    bot.feed(":irc.test 474 mup #dev :Cannot join channel (+b)")
    assert ready.called and bot.service.connected
    bot.clock.advance(60)
    assert bot.sent() == ["JOIN #dev"]  # a refused configured channel is retried later


def test_connected_even_when_joins_are_never_answered() -> None:
    bot = Bot()
    bot.feed(":irc.test 001 mup :Welcome")
    assert not bot.service.connected
    bot.clock.advance(10)
    assert bot.service.connected


def test_cap_negotiation_without_sasl() -> None:
    bot = Bot()
    bot.sent()
    bot.feed(":irc.test CAP * LS * :multi-prefix sasl=PLAIN,EXTERNAL",
             ":irc.test CAP * LS :account-tag account-notify away-notify extended-join")
    assert bot.sent() == ["CAP REQ :account-tag account-notify extended-join multi-prefix"]
    bot.feed(":irc.test CAP * ACK :account-tag account-notify extended-join multi-prefix")
    assert bot.sent() == ["CAP END"]
    assert bot.protocol.enabled_caps == {"account-tag", "account-notify", "extended-join",
                                         "multi-prefix"}


def test_cap_nak_ends_negotiation() -> None:
    bot = Bot()
    bot.sent()
    bot.feed(":irc.test CAP * LS :account-tag", ":irc.test CAP * NAK :account-tag")
    assert bot.sent() == ["CAP REQ account-tag", "CAP END"]


def test_sasl_plain_success() -> None:
    bot = Bot(sasl_username="mupacct", sasl_password="pw")
    bot.sent()
    bot.feed(":irc.test CAP * LS :sasl=PLAIN account-tag")
    assert bot.sent() == ["CAP REQ :account-tag sasl"]
    bot.feed(":irc.test CAP * ACK :account-tag sasl")
    assert bot.sent() == ["AUTHENTICATE PLAIN"]
    bot.feed("AUTHENTICATE :+")
    expected = base64.b64encode(b"mupacct\0mupacct\0pw").decode()
    assert bot.sent() == [f"AUTHENTICATE {expected}"]
    bot.feed(":irc.test 900 mup mup!u@h mupacct :You are now logged in as mupacct",
             ":irc.test 903 mup :SASL authentication successful")
    assert bot.sent() == ["CAP END"]
    assert bot.protocol.account == "mupacct"


def test_sasl_payload_is_chunked_at_400_bytes() -> None:
    bot = Bot(sasl_username="a" * 75, sasl_password="p" * 148)  # 300 raw bytes -> 400 base64
    bot.feed(":irc.test CAP * LS :sasl", ":irc.test CAP * ACK :sasl")
    bot.sent()
    bot.feed("AUTHENTICATE +")
    lines = bot.sent()
    assert len(lines) == 2 and len(lines[0]) == len("AUTHENTICATE ") + 400
    assert lines[1] == "AUTHENTICATE +"


def test_sasl_failure_falls_back_to_nickserv() -> None:
    bot = Bot(sasl_username="mup", sasl_password="wrong", nickserv_password="nspw")
    bot.feed(":irc.test CAP * LS :sasl=PLAIN", ":irc.test CAP * ACK :sasl", "AUTHENTICATE +")
    bot.sent()
    bot.feed(":irc.test 904 mup :SASL authentication failed")
    assert bot.sent() == ["CAP END"]
    bot.feed(":irc.test 001 mup :Welcome")
    assert bot.sent() == ["PRIVMSG NickServ :IDENTIFY mup nspw", "JOIN #ops"]
    assert bot.protocol.account is None


def test_sasl_mechanism_not_offered_is_not_requested() -> None:
    bot = Bot(sasl_username="mup", sasl_password="pw")
    bot.sent()
    bot.feed(":irc.test CAP * LS :sasl=EXTERNAL")
    assert bot.sent() == ["CAP END"]


def test_sasl_external() -> None:
    bot = Bot(sasl_mechanism="EXTERNAL")
    bot.feed(":irc.test CAP * LS :sasl=PLAIN,EXTERNAL", ":irc.test CAP * ACK :sasl")
    assert bot.sent()[-1] == "AUTHENTICATE EXTERNAL"
    bot.feed("AUTHENTICATE +")
    assert bot.sent() == ["AUTHENTICATE +"]


def test_nickserv_identify_without_sasl_support() -> None:
    bot = Bot(nickserv_password="nspw")
    bot.sent()
    bot.feed(":irc.test 001 mup :Welcome")
    assert bot.sent()[0] == "PRIVMSG NickServ :IDENTIFY mup nspw"


def test_nick_in_use_tries_alternates_then_regains() -> None:
    bot = Bot(alternate_nicks=["mup_", "mup__"])
    bot.sent()
    bot.feed(":irc.test 433 * mup :Nickname already in use")
    assert bot.sent() == ["NICK mup_"]
    bot.feed(":irc.test 433 * mup_ :Nickname already in use")
    assert bot.sent() == ["NICK mup__"]
    bot.feed(":irc.test 433 * mup__ :Nickname already in use")
    fallback = bot.sent()
    assert len(fallback) == 1 and fallback[0].startswith("NICK mup")
    bot.feed(":irc.test 001 mup__ :Welcome")  # the server took mup__ after all
    assert bot.protocol.nick == "mup__"
    bot.sent()
    bot.clock.advance(30)
    assert bot.sent() == ["NICK mup"]
    bot.feed(":irc.test 433 mup__ mup :Nickname already in use")  # still taken: no new tries
    assert bot.sent() == []
    bot.feed(":mup!x@h QUIT :bye")  # the holder left: try at once
    assert bot.sent() == ["NICK mup"]
    bot.feed(":mup__!~mup@h NICK :mup")
    assert bot.protocol.nick == "mup"
    bot.clock.advance(300)
    assert bot.sent() == []


def test_ping_is_answered_at_once() -> None:
    bot = Bot()
    bot.register()
    bot.feed("PING :irc.test")
    assert bot.sent() == ["PONG irc.test"]


def test_keepalive_ping_and_timeout() -> None:
    bot = Bot(ping_interval=60, ping_timeout=30)
    bot.register()
    bot.clock.advance(59)
    assert bot.sent() == []
    bot.clock.advance(1)
    (ping,) = bot.sent()
    assert ping.startswith("PING mup-keepalive-")
    bot.feed(":irc.test PONG irc.test :" + ping.split()[1])  # any line proves it alive
    bot.clock.advance(30)
    assert not bot.transport.disconnecting
    bot.clock.advance(30)  # silent again: another PING, then no answer
    assert bot.sent()[0].startswith("PING ")
    bot.clock.advance(29)
    assert not bot.transport.disconnecting
    bot.clock.advance(1)
    assert bot.transport.disconnecting


def test_registration_timeout() -> None:
    bot = Bot(ping_timeout=20)
    bot.clock.advance(19)
    assert not bot.transport.disconnecting
    bot.clock.advance(1)
    assert bot.transport.disconnecting


def test_kick_rejoins_after_delay() -> None:
    bot = Bot(rejoin_delay=10)
    bot.register()
    bot.feed(":alice!a@h KICK #ops mup :out")
    assert "#ops" not in bot.protocol.state.channels
    bot.clock.advance(9)
    assert bot.sent() == []
    bot.clock.advance(1)
    assert bot.sent() == ["JOIN #ops"]


def test_kick_from_unconfigured_channel_is_not_rejoined() -> None:
    bot = Bot()
    bot.register()
    bot.feed(f":{HOSTMASK} JOIN #other", ":alice!a@h KICK #other mup :out")
    bot.clock.advance(100)
    assert bot.sent() == []


def test_invites_only_to_configured_channels() -> None:
    bot = Bot(channels=["#ops", "#Dev"])
    bot.register()
    bot.feed(":alice!a@h INVITE mup #elsewhere")
    assert bot.sent() == []
    bot.feed(":alice!a@h INVITE mup #dev")
    assert bot.sent() == ["JOIN #dev"]


def test_flood_control_queue() -> None:
    bot = Bot(line_burst=5, line_rate=2.0)
    bot.register()
    bot.clock.advance(10)  # refill the tokens the JOIN used
    d = bot.service.deliver("#ops", [f"line {i}" for i in range(12)])
    assert bot.sent() == [f"PRIVMSG #ops :line {i}" for i in range(5)]
    bot.clock.advance(0.5)
    assert bot.sent() == ["PRIVMSG #ops :line 5"]
    bot.clock.advance(2.0)
    assert bot.sent() == [f"PRIVMSG #ops :line {i}" for i in range(6, 10)]
    bot.clock.advance(1.5)
    lines = bot.sent()
    assert lines[:2] == ["PRIVMSG #ops :line 10", "PRIVMSG #ops :line 11"]
    assert lines[2].startswith("PING mup-") and not d.called
    bot.feed(f":irc.test PONG irc.test :{lines[2].split()[1]}")
    assert d.called


def test_flood_control_keeps_one_timer_however_long_the_queue() -> None:
    bot = Bot(line_burst=5, line_rate=2.0)
    bot.register()
    bot.service.deliver("#ops", [f"line {i}" for i in range(50)])

    def pumps() -> int:
        return len([c for c in bot.clock.getDelayedCalls()
                    if c.active() and c.func == bot.protocol.queue._pump])

    assert pumps() == 1
    bot.clock.advance(0.5)
    assert pumps() == 1
    bot.clock.pump([0.5] * 100)
    assert pumps() == 0 and len(bot.sent()) == 51


def test_flood_control_off() -> None:
    bot = Bot(line_rate=0)
    bot.register()
    bot.service.deliver("#ops", [f"line {i}" for i in range(200)])
    assert len(bot.sent()) == 201


def test_deliver_confirms_only_on_matching_pong() -> None:
    bot = Bot(line_rate=0)
    bot.register()
    d = bot.service.deliver("alice", "hello\r\nQUIT :x", notice=True)
    lines = bot.sent()
    assert lines[:2] == ["NOTICE alice :hello", "NOTICE alice :QUIT :x"]
    token = lines[2].split()[1]
    bot.feed(":irc.test PONG irc.test :other-token")
    assert not d.called
    bot.feed(f":irc.test PONG irc.test :{token}")
    assert d.called and d.result is None


def test_deliver_fails_when_connection_is_lost_first() -> None:
    bot = Bot()
    bot.register()
    d = bot.service.deliver("#ops", "hello")
    bot.lose()
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(NotDelivered)
    assert not bot.service.connected


def test_deliver_fails_when_not_connected() -> None:
    bot = Bot()
    failure = []
    bot.service.deliver("#ops", "hello").addErrback(failure.append)
    assert failure[0].check(NotDelivered)


def test_long_text_fits_the_relayed_line() -> None:
    long_host = "h" * 60
    bot = Bot(line_rate=0)
    bot.feed(":irc.test 001 mup :Welcome", f":mup!~mup@{long_host} JOIN #ops")
    bot.sent()
    text = " ".join(f"wörd{i}" for i in range(600))
    bot.service.deliver("#ops", text)
    lines = [line for line in bot.sent() if line.startswith("PRIVMSG")]
    assert len(lines) > 5
    for line in lines:
        relayed = f":mup!~mup@{long_host} {line}\r\n".encode()
        assert len(relayed) <= 512
    assert " ".join(line.split(" :", 1)[1] for line in lines) == text


def test_echo_in_channel_and_private() -> None:
    bot = Bot()
    bot.register()
    bot.clock.advance(10)
    bot.feed(":alice!a@h PRIVMSG #ops :@echo hello world")
    assert bot.sent() == ["PRIVMSG #ops :alice: hello world"]
    bot.feed(":alice!a@h PRIVMSG #ops :mup: echo addressed")
    assert bot.sent() == ["PRIVMSG #ops :alice: addressed"]
    bot.feed(":alice!a@h PRIVMSG mup :echo private")
    assert bot.sent() == ["PRIVMSG alice :private"]
    bot.feed(":alice!a@h PRIVMSG #ops :just chatting", ":alice!a@h PRIVMSG mup :\x01VERSION\x01")
    assert bot.sent() == []


def test_unknown_command_gets_a_helpful_reply() -> None:
    bot = Bot()
    bot.register()
    bot.feed(":alice!a@h PRIVMSG #ops :@frobnicate")
    (reply,) = bot.sent()
    assert reply.startswith("PRIVMSG #ops :alice: ") and "help" in reply


def test_odd_bytes_never_crash() -> None:
    bot = Bot()
    bot.register()
    bot.clock.advance(10)
    bot.feed(b":alice!a@h PRIVMSG #ops :@echo caf\xe9 \xff\xfe",
             b"\xff\xfe\x00garbage", b"@", b":only-prefix", b":x!y@z PRIVMSG")
    assert bot.sent() == ["PRIVMSG #ops :alice: café ÿþ"]
    bot.feed(":alice!a@h PRIVMSG #ops :@echo still alive")
    assert bot.sent() == ["PRIVMSG #ops :alice: still alive"]


def test_reply_text_is_sanitized() -> None:
    def evil() -> Command:
        return Command("evil", "evil", "Bad reply.", lambda r: "a\r\nQUIT :bye\0")

    bot = Bot([evil()])
    bot.register()
    bot.feed(":alice!a@h PRIVMSG mup :evil")
    assert bot.sent() == ["PRIVMSG alice :a", "PRIVMSG alice :QUIT :bye"]


def test_per_user_command_limit() -> None:
    bot = Bot(command_burst=2, command_rate=0.5, line_rate=0)
    bot.register()
    for _ in range(4):
        bot.feed(":alice!a@h PRIVMSG #ops :@echo x")
    bot.feed(":bob!b@h PRIVMSG #ops :@echo y")
    lines = bot.sent()
    assert lines[:2] == ["PRIVMSG #ops :alice: x"] * 2
    assert lines[2].startswith("NOTICE alice :Slow down")
    assert lines[3:] == ["PRIVMSG #ops :bob: y"]  # silent for alice, others unaffected
    bot.clock.advance(2)
    bot.feed(":alice!a@h PRIVMSG #ops :@echo back")
    assert bot.sent() == ["PRIVMSG #ops :alice: back"]


def _whoami() -> Command:
    return Command("whoami", "whoami", "Your account.",
                   lambda r: f"account={r.account}", needs_account=True)


def test_account_from_message_tag() -> None:
    bot = Bot([_whoami()])
    bot.feed(":irc.test CAP * LS :account-tag", ":irc.test CAP * ACK :account-tag")
    bot.register()
    bot.feed("@account=alice :alice!a@h PRIVMSG mup :whoami",
             ":bob!b@h PRIVMSG mup :whoami")
    assert bot.sent() == ["PRIVMSG alice :account=alice", "PRIVMSG bob :account=None"]


def test_account_map_from_extended_join_and_account_notify() -> None:
    bot = Bot()
    bot.feed(":irc.test CAP * LS :account-notify extended-join",
             ":irc.test CAP * ACK :account-notify extended-join")
    bot.register()
    bot.feed(":carol!c@h JOIN #ops carol :Carol", ":dave!d@h JOIN #ops * :Dave")
    assert bot.service.account_of("carol").result == "carol"
    assert bot.service.account_of("dave").result is None
    bot.feed(":dave!d@h ACCOUNT dave2")
    assert bot.service.account_of("Dave").result == "dave2"
    bot.feed(":dave!d@h NICK :david")
    assert bot.service.account_of("david").result == "dave2"
    bot.feed(":carol!c@h ACCOUNT *")
    assert bot.service.account_of("carol").result is None
    assert bot.service.is_present("carol") and not bot.service.is_present("nobody")
    bot.feed(":carol!c@h PART #ops")
    assert not bot.service.is_present("carol")
    assert bot.sent() == []  # all answered from the map


def test_account_by_whois_330() -> None:
    bot = Bot(line_rate=0)
    bot.register()
    d = bot.service.account_of("alice")
    assert bot.sent() == ["WHOIS alice"]
    again = bot.service.account_of("ALICE")  # coalesced into the same WHOIS
    assert bot.sent() == []
    bot.feed(":irc.test 311 mup alice a h * :Alice",
             ":irc.test 330 mup alice alice_acct :is logged in as",
             ":irc.test 318 mup alice :End of /WHOIS list.")
    assert d.result == "alice_acct" and again.result == "alice_acct"


def test_whois_unidentified_and_unknown_and_timeout() -> None:
    bot = Bot(line_rate=0)
    bot.register()
    plain = bot.service.account_of("bob")
    bot.feed(":irc.test 311 mup bob b h * :Bob", ":irc.test 318 mup bob :End of /WHOIS list.")
    assert plain.result is None
    gone = bot.service.account_of("ghost")
    bot.feed(":irc.test 401 mup ghost :No such nick")
    assert gone.result is None
    slow = bot.service.account_of("slow")
    assert not slow.called
    bot.clock.advance(10)
    assert slow.result is None


def test_whois_waiters_get_none_when_connection_drops() -> None:
    bot = Bot()
    bot.register()
    d = bot.service.account_of("alice")
    bot.lose()
    assert d.called and d.result is None


def test_when_connected_fires_on_next_registration() -> None:
    bot = Bot()
    waiting = bot.service.when_connected()
    assert not waiting.called
    bot.register()
    assert waiting.called
    assert bot.service.when_connected().called


@pytest.mark.parametrize("attempt", range(12))
def test_reconnect_backoff_grows_with_jitter_and_a_cap(attempt: int) -> None:
    policy = retry_policy(120.0)
    delay = policy(attempt)
    base = min(2.0 ** attempt, 120.0)
    assert base <= delay <= base + 1.0


def test_tcp_nodelay_is_set() -> None:
    class TCPTransport(StringTransport):
        nodelay = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.nodelay = enabled

    bot = Bot()
    transport = TCPTransport()
    protocol = bot.service.factory.buildProtocol(None)
    protocol.makeConnection(transport)
    assert transport.nodelay


def test_deliver_to_a_refused_target_errbacks_refused() -> None:
    from mup.irc import TargetRefused

    bot = Bot(line_rate=0)
    bot.register()
    d = bot.service.deliver("ghost", "hello")
    other = bot.service.deliver("#ops", "fine")
    lines = bot.sent()
    ghost_token, ops_token = lines[1].split()[1], lines[3].split()[1]
    bot.feed(":irc.test 401 mup ghost :No such nick or channel name",
             f":irc.test PONG irc.test :{ghost_token}", f":irc.test PONG irc.test :{ops_token}")
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(TargetRefused) and "ghost" in str(failures[0].value)
    assert isinstance(failures[0].value, ValueError)
    assert other.result is None


def test_deliver_to_a_moderated_channel_errbacks_refused() -> None:
    from mup.irc import TargetRefused

    bot = Bot(line_rate=0)
    bot.register()
    d = bot.service.deliver("#quiet", "hello")
    token = bot.sent()[1].split()[1]
    bot.feed(":irc.test 404 mup #quiet :Cannot send to channel",
             f":irc.test PONG irc.test :{token}")
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(TargetRefused)


def test_account_tags_are_remembered_only_for_channel_members() -> None:
    bot = Bot()
    bot.feed(":irc.test CAP * LS :account-tag account-notify",
             ":irc.test CAP * ACK :account-tag account-notify")
    bot.register()
    bot.feed("@account=alice :alice!a@h PRIVMSG #ops :hi",
             "@account=zed :zed!z@h PRIVMSG mup :hi")
    assert bot.protocol.state.accounts == {"alice": "alice"}
    bot.feed(":alice!a@h PRIVMSG #ops :logged out now?")  # no tag: not logged in
    assert bot.service.account_of("alice").result is None
    bot.feed("@account=alice :alice!a@h QUIT :bye")
    assert bot.protocol.state.accounts == {}


def test_backoff_grows_while_the_server_drops_us_before_registration(monkeypatch) -> None:
    """A TLS verification failure or a ban connects, then drops: that must back off too."""
    import random

    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import MemoryReactorClock

    monkeypatch.setattr(random, "random", lambda: 0.0)  # no jitter
    reactor = MemoryReactorClock()
    config = parse_config({"irc": {"channels": [], "reconnect_max_delay": 10.0}})
    service = IRCService(config, None, reactor)
    service.startService()

    def connect_and_drop(register: bool) -> float:
        factory = reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        if register:
            protocol.dataReceived(b":irc.test 001 mup :Welcome\r\n")
            assert service.connected
        protocol.connectionLost(Failure(ConnectionDone()))
        (retry,) = [c for c in reactor.getDelayedCalls() if c.active()]
        delay = retry.getTime() - reactor.seconds()
        reactor.advance(delay)
        return delay

    assert [connect_and_drop(False) for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert connect_and_drop(True) == 2.0  # a registered connection resets the backoff
    assert [connect_and_drop(False) for _ in range(2)] == [2.0, 4.0]


def test_own_hostmask_from_the_welcome_line() -> None:
    bot = Bot(channels=[])
    bot.feed(":irc.test 001 mup :Welcome to the Internet Relay Network mup!~mup@10.1.2.3")
    assert bot.protocol.hostmask == "mup!~mup@10.1.2.3"
    assert bot.service.connected
    assert bot.protocol._text_limit("PRIVMSG", "alice") == 512 - len(
        ":mup!~mup@10.1.2.3 PRIVMSG alice :\r\n")


_COMMANDS = ["PRIVMSG", "NOTICE", "JOIN", "PART", "KICK", "NICK", "QUIT", "CAP", "AUTHENTICATE",
             "INVITE", "ACCOUNT", "PING", "PONG", "CHGHOST", "ERROR", "001", "318", "330",
             "353", "396", "401", "403", "404", "432", "433", "437", "471", "900", "901", "903",
             "904"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["", "alice!a@h", "mup!~mup@h", "irc.test", "!@"]),
    st.sampled_from(_COMMANDS),
    st.lists(st.sampled_from(["", "mup", "#ops", "alice", "*", "LS", "ACK", "+", "@echo x",
                              "mup: echo y", "sasl account-tag", "\x01VERSION\x01", "é"]),
             max_size=5)), max_size=12))
def test_any_sequence_of_messages_is_handled_without_error(messages) -> None:
    from mup.ircmsg import Message

    bot = Bot(sasl_username="u", sasl_password="p", line_rate=0)
    for prefix, command, params in messages:
        bot.protocol.messageReceived(Message(command, tuple(params), prefix))
    bot.clock.advance(100)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_random_bytes_parse_or_are_rejected_cleanly(lines: list[bytes]) -> None:
    from mup.ircmsg import decode, parse

    bot = Bot(line_rate=0)
    bot.register()
    for raw in lines:
        try:
            msg = parse(decode(raw))
        except ValueError:
            continue
        bot.protocol.messageReceived(msg)
    assert not bot.transport.disconnecting


@pytest.mark.parametrize("endpoint", ["tcp:host=x", "tcp:host=x:port=abc", "foo:bar",
                                      "tls:host=x:port=1:certificate=/nonexistent.pem"])
def test_unusable_endpoint_is_a_config_error(endpoint: str) -> None:
    from mup.config import ConfigError

    config = parse_config({"irc": {"endpoint": endpoint}}, path="mup.toml")
    with pytest.raises(ConfigError, match=r"^mup.toml: \[irc\] endpoint: cannot use"):
        IRCService(config, None, Clock())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=4), st.booleans())
def test_delivered_text_never_breaks_the_line_structure(texts: list[str], notice: bool) -> None:
    bot = Bot(line_rate=0)
    bot.register()
    bot.service.deliver("#ops", texts, notice=notice)
    data = bot.transport.value()
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert lines[-1].startswith(b"PING ")
    command = b"NOTICE #ops :" if notice else b"PRIVMSG #ops :"
    for line in lines[:-1]:
        assert line.startswith(command)
        assert not any(c in line for c in b"\r\n\0")
        assert len(f":{HOSTMASK} ".encode()) + len(line) + 2 <= 512


def test_queued_deliveries_share_one_confirming_ping() -> None:
    """Behind flood control, a PING still waiting at the queue's tail is folded into the next
    delivery's: one PONG confirms both, and the PING costs one line instead of two."""
    bot = Bot(line_burst=1, line_rate=1.0)
    bot.register()
    bot.clock.advance(10)
    first = bot.service.deliver("#ops", "one")
    second = bot.service.deliver("alice", "two")
    bot.clock.pump([1.0] * 5)
    lines = bot.sent()
    assert [line.split()[0] for line in lines] == ["PRIVMSG", "PRIVMSG", "PING"]
    assert not first.called and not second.called
    bot.feed(f":irc.test PONG irc.test :{lines[-1].split()[1]}")
    assert first.called and second.called


def test_shared_ping_keeps_refusals_per_target() -> None:
    bot = Bot(line_burst=1, line_rate=1.0)
    bot.register()
    bot.clock.advance(10)
    first = bot.service.deliver("#ops", "one")
    second = bot.service.deliver("ghost", "two")
    bot.clock.pump([1.0] * 5)
    token = bot.sent()[-1].split()[1]
    bot.feed(":irc.test 401 mup ghost :No such nick/channel",
             f":irc.test PONG irc.test :{token}")
    failures: list = []
    second.addErrback(failures.append)
    assert first.called and first.result is None
    assert failures and "ghost" in str(failures[0].value)


def test_a_sent_ping_is_not_shared() -> None:
    bot = Bot(line_rate=0)
    bot.register()
    first = bot.service.deliver("#ops", "one")
    second = bot.service.deliver("#ops", "two")
    pings = [line.split()[1] for line in bot.sent() if line.startswith("PING")]
    assert len(pings) == 2
    bot.feed(f":irc.test PONG irc.test :{pings[0]}")
    assert first.called and not second.called


def test_cancelled_delivery_stops_waiting() -> None:
    bot = Bot(line_burst=1, line_rate=1.0)
    bot.register()
    bot.clock.advance(10)
    first = bot.service.deliver("#ops", "one")
    second = bot.service.deliver("#ops", "two")
    first.addErrback(lambda f: None)
    first.cancel()
    bot.clock.pump([1.0] * 5)
    bot.feed(f":irc.test PONG irc.test :{bot.sent()[-1].split()[1]}")
    assert second.called and second.result is None


def test_service_reports_the_current_nick() -> None:
    bot = Bot()
    bot.feed(":irc.test 433 * mup :Nickname is already in use", ":irc.test 001 mup_ :Welcome")
    assert bot.service.nick == "mup_"
    bot.lose()
    assert bot.service.nick == "mup"


def test_connect_failures_are_logged_once_per_change_with_host_port_and_reason() -> None:
    """Issue 13 item 8: not `Scheduling retry N to connect <TCP4ClientEndpoint ...>`."""
    from twisted.internet.error import ConnectionLost, ConnectionRefusedError, TimeoutError
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    reactor = MemoryReactorClock()
    config = parse_config({"irc": {"channels": [], "reconnect_max_delay": 2.0,
                                   "endpoint": "tcp:host=irc.example.net:port=6697"}})
    service = IRCService(config, None, reactor)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service.startService()

        def fail(reason: Exception) -> None:
            host, port, factory = reactor.tcpClients[-1][:3]
            assert (host, port) == ("irc.example.net", 6697)
            factory.clientConnectionFailed(None, Failure(reason))
            reactor.advance(5)

        for reason in [ConnectionRefusedError(), ConnectionRefusedError(), TimeoutError(),
                       TimeoutError()]:
            fail(reason)
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionLost(
            "[('SSL routines', '', 'certificate verify failed')]")))
        reactor.advance(5)
        fail(ConnectionRefusedError())
        service.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text = [formatEvent(e) for e in events]
    mine = [t for t in text if "irc.example.net:6697" in t and "Scheduling" not in t]
    assert mine == [
        "Cannot connect to the IRC server irc.example.net:6697 (tcp): connection refused; "
        "retrying with backoff",
        "Cannot connect to the IRC server irc.example.net:6697 (tcp): timed out; "
        "retrying with backoff",
        "The IRC server irc.example.net:6697 (tcp) dropped the connection before "
        "registration: TLS certificate rejected: Connection to the other side was lost in a "
        "non-clean fashion: [('SSL routines', '', 'certificate verify failed')]."
        "; retrying with backoff",
        "Cannot connect to the IRC server irc.example.net:6697 (tcp): connection refused; "
        "retrying with backoff",
    ]
    assert not any("object at 0x" in t for t in text)


def test_help_in_a_channel_hints_with_the_prefix() -> None:
    bot = Bot()
    bot.register()
    bot.clock.advance(10)
    bot.feed(":alice!a@h PRIVMSG #ops :@help", ":alice!a@h PRIVMSG mup :help")
    assert bot.sent() == ["PRIVMSG #ops :alice: Commands: help. Say '@help <command>' for more.",
                          "PRIVMSG alice :Commands: help. Say 'help <command>' for more."]


def test_the_listener_hears_nick_mask_account_and_place() -> None:
    """IRC reports "a message from this nick, with this mask and account, in this place";
    it runs no commands itself."""
    from mup.irc import IRCProtocol, IRCSettings

    heard: list = []

    class Listener:
        def connection_made(self, protocol) -> None: ...
        def connection_ready(self, protocol) -> None: ...
        def connection_lost(self, protocol, reason) -> None: ...

        def message_received(self, message, link) -> None:
            heard.append(message)
            link.say(message.channel or message.nick, "heard", lane=message.nick.lower())

    protocol = IRCProtocol(IRCSettings(channels=("#ops",), line_rate=0), Listener(), Clock())
    transport = StringTransport()
    protocol.makeConnection(transport)
    for line in [":irc.test CAP * LS :account-tag", ":irc.test CAP * ACK :account-tag",
                 ":irc.test 001 mup :Welcome", f":{HOSTMASK} JOIN #ops",
                 "@account=al :alice!a@host.example PRIVMSG #ops :hello",
                 ":bob!b@h PRIVMSG mup :psst", ":mup!~mup@h PRIVMSG #ops :myself",
                 ":irc.test NOTICE mup :server", ":carol!c@h PRIVMSG mup :\x01VERSION\x01"]:
        protocol.dataReceived(line.encode() + b"\r\n")
    assert [(m.nick, m.mask, m.account, m.account_known, m.channel, m.text, m.own_nick)
            for m in heard] == [
        ("alice", "alice!a@host.example", "al", True, "#ops", "hello", "mup"),
        ("bob", "bob!b@h", None, True, None, "psst", "mup")]
    assert transport.value().endswith(b"PRIVMSG #ops :heard\r\nPRIVMSG bob :heard\r\n")
