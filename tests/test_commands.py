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
