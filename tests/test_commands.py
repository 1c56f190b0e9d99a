"""The command framework: addressing, dispatch, help, usage errors, failures."""

from __future__ import annotations

import pytest

from mup.commands import Command, Commands, Request, UsageError, parse_command
from mup.commands.basic import echo


@pytest.mark.parametrize("text, private, expected", [
    ("mup: poke gustavo", False, ("poke", "gustavo")),
    ("mup, poke gustavo", False, ("poke", "gustavo")),
    ("MUP:   Poke   gustavo  ", False, ("poke", "gustavo")),
    ("@poke gustavo", False, ("poke", "gustavo")),
    ("@ECHO a  b", False, ("echo", "a  b")),
    ("poke gustavo", True, ("poke", "gustavo")),
    ("@poke gustavo", True, ("poke", "gustavo")),
    ("mup: help", True, ("help", "")),
    ("poke gustavo", False, None),
    ("mupper: poke x", False, None),
    ("mup poke x", False, None),
    ("mup:", False, None),
    ("@", False, None),
    ("", True, None),
    ("hello @poke x", False, None),
])
def test_parse_command(text, private, expected):
    assert parse_command(text, "mup", "@", private) == expected


def run(commands: Commands, name: str, args: str = "", how: str = "") -> list[str]:
    d = commands.run(name, Request(nick="joe", args=args, channel="#ops", how=how))
    results: list = []
    d.addBoth(results.append)
    assert results, "commands without I/O answer synchronously"
    return results[0]


def test_echo():
    assert run(Commands([echo()]), "echo", "hi there") == ["hi there"]


def test_echo_without_text_shows_usage():
    assert run(Commands([echo()]), "echo") == ["Usage: echo <text>"]


def test_help_lists_and_explains():
    """echo is a test command: not listed, still explained (issue 13 item 12)."""
    commands = Commands([echo()])
    assert run(commands, "help") == ["Commands: help. Say 'help <command>' for more."]
    assert run(commands, "help", "echo") == [
        "echo <text> — Replies with the text (a test command)."]
    assert run(commands, "help", "nope") == ["I don't know 'nope'. Commands: help."]
    assert run(commands, "echo", "still works") == ["still works"]


def test_help_hint_says_how_commands_are_addressed_here():
    """In a channel only '@help poke' works, so the hint says so (issue 13 item 12)."""
    assert run(Commands(), "help", how="@") == [
        "Commands: help. Say '@help <command>' for more."]
    assert run(Commands(), "pokee", how="mup: ") == [
        "I don't know the command 'pokee'. Try 'mup: help'."]


def test_unknown_command_gets_a_helpful_reply():
    assert run(Commands(), "pokee") == ["I don't know the command 'pokee'. Try 'help'."]


def test_async_command_and_list_reply():
    async def handler(request: Request) -> list[str]:
        return [request.nick, request.args]

    commands = Commands([Command("two", "two <x>", "Two lines.", handler)])
    assert run(commands, "two", "x") == ["joe", "x"]


def test_usage_error_with_reason():
    def handler(request: Request) -> str:
        raise UsageError("Who?")

    commands = Commands([Command("poke", "poke <nick>", "Finds someone.", handler)])
    assert run(commands, "poke") == ["Who? Usage: poke <nick>"]


def test_failure_is_logged_and_answered():
    def handler(request: Request) -> str:
        raise RuntimeError("boom")

    commands = Commands([Command("bad", "bad", "Fails.", handler)])
    from twisted.logger import globalLogPublisher

    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    try:
        assert run(commands, "bad") == ["Oops, that failed on my side. It has been logged."]
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert any(e.get("log_failure") is not None for e in seen)


def test_duplicate_names_refused():
    with pytest.raises(ValueError):
        Commands([echo(), echo()])


class Link:
    """A ChatLink that records what the dispatcher sends and answers account lookups."""

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        self.said: list[tuple[str, list[str], bool, str, str]] = []
        self.lookups: list[str] = []
        self.accounts = accounts or {}

    def say(self, target, text, notice=False, address="", lane=""):
        lines = [text] if isinstance(text, str) else list(text)
        self.said.append((target, lines, notice, address, lane))
        return len(lines)

    def account_of(self, nick):
        from twisted.internet.defer import succeed

        self.lookups.append(nick)
        return succeed(self.accounts.get(nick))


def _message(text: str, channel: str | None = "#ops", nick: str = "Joe", **kw):
    from mup.ircevents import ChatMessage

    return ChatMessage(nick=nick, mask=f"{nick}!j@host", text=text, channel=channel,
                       own_nick="mup", **kw)


def _requests_of(name: str = "who", needs_account: bool = False):
    seen: list[Request] = []

    def handler(request: Request) -> str:
        seen.append(request)
        return "ok"

    return Command(name, name, "Records.", handler, needs_account=needs_account), seen


def test_dispatcher_runs_commands_with_who_and_where_and_answers_in_the_requesters_lane():
    from twisted.internet.task import Clock

    from mup.commands import Dispatcher

    command, seen = _requests_of()
    dispatcher = Dispatcher(Commands([command]), Clock(), prefix="@")
    link = Link()
    dispatcher.message_received(_message("@who x y", account="joe", account_known=True), link)
    dispatcher.message_received(_message("who private", channel=None), link)
    dispatcher.message_received(_message("just chatting"), link)
    assert [(r.nick, r.args, r.channel, r.hostmask, r.account, r.how) for r in seen] == [
        ("Joe", "x y", "#ops", "Joe!j@host", "joe", "@"),
        ("Joe", "private", None, "Joe!j@host", None, "")]
    assert link.said == [("#ops", ["ok"], False, "Joe: ", "joe"), ("Joe", ["ok"], False, "", "joe")]
    assert link.lookups == []


def test_dispatcher_asks_the_account_only_when_a_command_needs_it_and_irc_does_not_know():
    from twisted.internet.task import Clock

    from mup.commands import Dispatcher

    command, seen = _requests_of(needs_account=True)
    dispatcher = Dispatcher(Commands([command]), Clock())
    link = Link({"Joe": "joe-account"})
    dispatcher.message_received(_message("@who"), link)
    dispatcher.message_received(_message("@who", account=None, account_known=True), link)
    assert link.lookups == ["Joe"]
    assert [r.account for r in seen] == ["joe-account", None]


def test_dispatcher_limits_each_user_warning_once():
    from twisted.internet.task import Clock

    from mup.commands import Dispatcher

    clock = Clock()
    dispatcher = Dispatcher(Commands([echo()]), clock, burst=2, rate=0.5)
    link = Link()
    for _ in range(4):
        dispatcher.message_received(_message("@echo x"), link)
    dispatcher.message_received(_message("@echo y", nick="bob"), link)
    assert [(t, lines[0][:9], notice) for t, lines, notice, _a, _l in link.said] == [
        ("#ops", "x", False), ("#ops", "x", False), ("Joe", "Slow down", True),
        ("#ops", "y", False)]
    clock.advance(2)
    dispatcher.message_received(_message("@echo back"), link)
    assert link.said[-1][1] == ["back"]


def test_dispatcher_hint_without_a_prefix_uses_the_bots_nick():
    from twisted.internet.task import Clock

    from mup.commands import Dispatcher

    dispatcher = Dispatcher(Commands(), Clock(), prefix="")
    link = Link()
    dispatcher.message_received(_message("mup: help"), link)
    assert link.said[0][1] == ["Commands: help. Say 'mup: help <command>' for more."]
