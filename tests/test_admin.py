"""Admin commands through the command framework: who may run them, what they answer, what they
keep.  Unit level (task.Clock, an in-memory state store); the IRC end to end tests are in
test_admin_e2e.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from mup.admin import Channels, Gate, IgnoreList, Operators, to_mask
from mup.commands import NOT_OPERATOR, Command, Commands, Request
from mup.commands.admin import admin_commands
from mup.store import StateStore
from mup.store.memory import MemoryStateStore

ADMIN = "alice!a@admin.example.com"
USER = "mallory!m@evil.example.net"


@dataclass
class FakeIRC:
    """The ChannelControl seam: records what the commands asked IRC to do."""

    calls: list[tuple[str, str, str | None]] = field(default_factory=list)

    def join(self, channel: str, key: str | None = None) -> None:
        self.calls.append(("join", channel, key))

    def part(self, channel: str, reason: str | None = None) -> None:
        self.calls.append(("part", channel, reason))


class FakeStatus:
    async def status(self) -> list[str]:
        return ["IRC: connected"]


class FakeReload:
    def __init__(self) -> None:
        self.count = 0

    async def reload(self) -> list[str]:
        self.count += 1
        return ["Reloaded."]


class Budget:
    def __init__(self) -> None:
        self.resets: list[str] = []

    def describe(self, sender: str) -> str:
        return f"{sender} has 5 of 50 left."

    def reset(self, sender: str) -> None:
        self.resets.append(sender)


class Bot:
    def __init__(self, store: StateStore | None = None, accounts=("alice",),
                 hostmasks=("*!*@admin.example.com",)) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = store if store is not None else MemoryStateStore()
        self.irc = FakeIRC()
        self.ignores = IgnoreList(self.clock, self.store)
        self.channels = Channels(["#ops"], self.store)
        self.ignores.load()
        self.channels.load()
        self.reloader = FakeReload()
        self.budget = Budget()
        self.sent_sms: list[str] = []

        def sms(request: Request) -> str:
            self.sent_sms.append(request.args)
            return "SMS is on the way!"

        self.commands = Commands(
            [Command("sms", "sms <nick> <text>", "Sends.", sms)]
            + admin_commands(control=self.irc, channels=self.channels, ignores=self.ignores,
                             status=FakeStatus(), reloader=self.reloader, budget=self.budget),
            gate=Gate(Operators(accounts, hostmasks), self.ignores))

    def say(self, line: str, hostmask: str = ADMIN, account: str | None = None) -> list[str]:
        name, _, args = line.partition(" ")
        request = Request(nick=hostmask.split("!")[0], args=args.strip(), channel="#ops",
                          hostmask=hostmask, account=account)
        result: list[list[str]] = []
        self.commands.run(name, request).addCallback(result.append)
        assert result, "the command did not answer synchronously"
        return result[0]


ADMIN_LINES = ["join #new", "part #ops", "ignore bob", "unignore bob", "ignores", "status",
               "reload", "quota joe", "quota reset joe"]


@pytest.mark.parametrize("line", ADMIN_LINES)
def test_non_operator_is_refused_plainly(line):
    bot = Bot()
    assert bot.say(line, hostmask=USER) == [NOT_OPERATOR]
    assert bot.irc.calls == [] and bot.reloader.count == 0 and bot.budget.resets == []


@pytest.mark.parametrize("line", ADMIN_LINES)
def test_operator_by_account_or_hostmask(line):
    for hostmask, account in [("alice!x@elsewhere.example.org", "Alice"), (ADMIN, None)]:
        answer = Bot().say(line, hostmask=hostmask, account=account)
        assert answer and answer != [NOT_OPERATOR], (line, hostmask, answer)


def test_nobody_is_an_operator_by_default():
    bot = Bot(accounts=(), hostmasks=())
    assert bot.say("status", hostmask=ADMIN, account="alice") == [NOT_OPERATOR]


@pytest.mark.parametrize("line, answer, calls", [
    ("join #new", ["Joining #new (kept across restarts)."], [("join", "#new", None)]),
    ("join #new sekrit", ["Joining #new (kept across restarts)."], [("join", "#new", "sekrit")]),
    ("part #ops bye all", ["Leaving #ops (kept across restarts)."], [("part", "#ops", "bye all")]),
    ("join new", ["'new' is not a channel. Usage: join #channel [key]"], []),
    ("join", ["Usage: join #channel [key]"], []),
])
def test_join_part(line, answer, calls):
    bot = Bot()
    assert bot.say(line) == answer
    assert bot.irc.calls == calls


def test_joins_and_parts_survive_a_restart():
    store = MemoryStateStore()
    bot = Bot(store)
    bot.say("join #new key1")
    bot.say("part #ops")
    again = Bot(store)
    assert again.channels.wanted() == {"#new": "key1"}


def test_ignore_silences_commands_and_sms():
    bot = Bot()
    assert bot.say("ignore mallory") == ["Ignoring mallory!*@* until unignored."]
    assert bot.say("sms joe hi", hostmask=USER) == []
    assert bot.sent_sms == []
    assert bot.say("ignores") == ["Ignored: mallory!*@*."]
    assert bot.say("unignore mallory") == ["No longer ignoring mallory!*@*."]
    assert bot.say("sms joe hi", hostmask=USER) == ["SMS is on the way!"]


def test_ignore_with_a_duration_expires():
    bot = Bot()
    assert bot.say("ignore *!*@evil.example.net 2h") == [
        "Ignoring *!*@evil.example.net for 2h."]
    assert bot.say("sms joe hi", hostmask=USER) == []
    bot.clock.advance(2 * 3600 + 1)
    assert bot.say("sms joe hi", hostmask=USER) == ["SMS is on the way!"]
    assert bot.say("ignores") == ["Nobody is ignored."]


def test_ignores_survive_a_restart_and_expiry_is_kept():
    store = MemoryStateStore()
    bot = Bot(store)
    bot.say("ignore mallory 1h")
    bot.say("ignore eve")
    again = Bot(store)
    assert [e.mask for e in again.ignores.entries()] == ["eve!*@*", "mallory!*@*"]
    again.clock.advance(3601)
    assert [e.mask for e in again.ignores.entries()] == ["eve!*@*"]
    assert list(store.tables["ignores"]) == ["eve!*@*"]


def test_an_operator_cannot_ignore_themselves_and_is_never_ignored():
    bot = Bot()
    assert bot.say("ignore *!*@admin.example.com") == [
        "*!*@admin.example.com matches you; I won't ignore you."]
    bot.ignores.add("alice", None, "someone")
    assert bot.say("status") == ["IRC: connected"]


def test_bad_duration_shows_usage():
    bot = Bot()
    answer = bot.say("ignore bob soon")
    assert answer[0].startswith("not a duration: 'soon'")
    assert answer[0].endswith("Usage: ignore <nick|mask> [duration]")


def test_quota_commands():
    bot = Bot()
    assert bot.say("quota joe") == ["joe has 5 of 50 left."]
    assert bot.say("quota reset joe") == ["joe's SMS budget is reset. joe has 5 of 50 left."]
    assert bot.budget.resets == ["joe"]


def test_help_lists_operator_commands_apart():
    bot = Bot()
    answer = bot.say("help", hostmask=USER)[0]
    assert answer.startswith("Commands: help, sms. Operator commands: ")
    assert "ignore" in answer and "reload" in answer
    assert bot.say("help reload", hostmask=USER)[0].endswith("(operators only)")


@pytest.mark.parametrize("text, mask", [
    ("bob", "bob!*@*"), ("Bob", "bob!*@*"), ("*!*@host", "*!*@host"),
    ("bob@host", "*!bob@host"), ("bob!user", "bob!user@*"),
])
def test_to_mask(text, mask):
    assert to_mask(text) == mask


def test_admin_commands_ask_for_the_account():
    bot = Bot()
    assert bot.commands.get("status").wants_account
    assert not bot.commands.get("help").wants_account
