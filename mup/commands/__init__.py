"""The command framework: a command is one small, self-describing unit.

Data flows one way: the IRC layer turns a PRIVMSG into a :class:`Request`, :class:`Commands`
finds the :class:`Command` and runs it, and the command returns its reply as text.  A command
never touches IRC; it gets what it needs (a directory, a gateway) when it is built.

Adding a command::

    def ping() -> Command:
        async def run(request: Request) -> str:
            return "pong"
        return Command("ping", "ping", "Answers pong.", run)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Union

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

__all__ = ["Command", "Commands", "Reply", "Request", "UsageError", "parse_command"]

log = Logger()

Reply = Union[str, list[str], None]
"""What a command answers: a line, several lines, or nothing."""


class UsageError(Exception):
    """Raised by a command whose arguments are wrong; the user is shown its usage."""


@dataclass(frozen=True)
class Request:
    """One command from one person."""

    nick: str
    """Who asked (their current IRC nick)."""
    args: str
    """The text after the command name, stripped."""
    channel: str | None = None
    """The channel it was asked in, or None for a private message."""
    hostmask: str = ""
    """``nick!user@host`` as the server gave it."""
    account: str | None = None
    """The sender's services account, resolved by the IRC layer for commands that need it
    (``Command.needs_account``); None when not logged in or unknown."""
    how: str = ""
    """What comes before a command's name where this was asked: ``"@"`` (the prefix) in a
    channel, ``""`` in a private message; used in hints such as "Say '@help poke'"."""

    @property
    def private(self) -> bool:
        return self.channel is None


Handler = Callable[[Request], Union[Reply, Awaitable[Reply]]]


@dataclass(frozen=True)
class Command:
    """A command: its name, usage line, one-line summary and the function that runs it."""

    name: str
    usage: str
    """e.g. ``"poke <nick|name|phone>"``."""
    summary: str
    handler: Handler
    needs_account: bool = False
    """Ask the IRC layer to resolve the sender's services account before running."""
    hidden: bool = False
    """Left out of the ``help`` list (a test command); ``help <name>`` still explains it."""


def parse_command(text: str, nick: str, prefix: str, private: bool) -> tuple[str, str] | None:
    """Split a message addressed to the bot into ``(command, args)``, or None if it is not one.

    Addressed (``mup: poke x``, ``mup, poke x``), prefixed (``@poke x``) or, in a private
    message, the bare command (``poke x``).
    """
    text = text.strip()
    body: str | None = None
    lowered = text.lower()
    low_nick = nick.lower()
    if lowered.startswith(low_nick) and len(text) > len(nick) and text[len(nick)] in ":,":
        body = text[len(nick) + 1:]
    elif prefix and text.startswith(prefix):
        body = text[len(prefix):]
    elif private:
        body = text
    if body is None:
        return None
    body = body.strip()
    if not body:
        return None
    name, _, args = body.partition(" ")
    return name.lower(), args.strip()


class Commands:
    """The set of commands the bot answers, with ``help`` built in."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        self.add(Command("help", "help [command]", "Lists the commands, or shows how to use one.",
                         self._help))
        for command in commands:
            self.add(command)

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"command {command.name!r} registered twice")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def __iter__(self):
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def _help(self, request: Request) -> str:
        name = request.args.split(" ", 1)[0].lower() if request.args else ""
        if name:
            command = self._commands.get(name)
            if command is None:
                return f"I don't know {name!r}. Commands: {self._names()}."
            return f"{command.usage} — {command.summary}"
        return f"Commands: {self._names()}. Say '{request.how}help <command>' for more."

    def _names(self) -> str:
        return ", ".join(c.name for c in self if not c.hidden)

    def run(self, name: str, request: Request) -> Deferred[list[str]]:
        """Run command ``name``; always fires with the reply lines, never errbacks."""
        command = self._commands.get(name)
        if command is None:
            return Deferred.fromCoroutine(_const(
                [f"I don't know the command {name[:50]!r}. Try '{request.how}help'."]))
        return ensureDeferred(self._run(command, request))

    async def _run(self, command: Command, request: Request) -> list[str]:
        try:
            result = command.handler(request)
            if inspect.isawaitable(result):
                result = await result
        except UsageError as e:
            text = str(e)
            return [f"{text} Usage: {command.usage}" if text else f"Usage: {command.usage}"]
        except Exception:
            log.failure("Command {name!r} from {nick} failed", name=command.name,
                        nick=request.nick)
            return ["Oops, that failed on my side. It has been logged."]
        if result is None:
            return []
        if isinstance(result, str):
            return [result]
        return list(result)


async def _const(value: list[str]) -> list[str]:
    return value
