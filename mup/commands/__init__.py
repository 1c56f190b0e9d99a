"""The command framework: a command is one small, self-describing unit.

Data flows one way: the IRC transport reports what a person said (a
:class:`~mup.ircevents.ChatMessage`: nick, mask, account, place, text) to the
:class:`Dispatcher`, which sees whether it is a command, applies the per-user limit, finds out
the sender's account if the command needs it, and has :class:`Commands` run it as a
:class:`Request`; the command returns its reply as text, which the dispatcher sends back
through the :class:`~mup.ircevents.ChatLink`.  A command never touches IRC; it gets what it
needs (a directory, a gateway) when it is built.

Adding a command::

    def ping() -> Command:
        async def run(request: Request) -> str:
            return "pong"
        return Command("ping", "ping", "Answers pong.", run)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Iterator, Protocol, Union

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mup.config import Config
from mup.ircevents import ChatLink, ChatMessage
from mup.ircmsg import irc_lower
from mup.ratelimit import PerKeyLimit

__all__ = ["NOT_OPERATOR", "Command", "Commands", "Dispatcher", "Gate", "Reply", "Request",
           "Sender", "UsageError", "parse_command"]

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
    admin: bool = False
    """Only the bot's operators may run it (checked by :class:`Commands`, not the command)."""

    @property
    def wants_account(self) -> bool:
        """Whether the sender's services account must be known before running it."""
        return self.needs_account or self.admin


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


class Sender(Protocol):
    """Who asked, as the gate sees them (a :class:`Request` or a chat message)."""

    @property
    def hostmask(self) -> str: ...

    @property
    def account(self) -> str | None: ...


class Gate(Protocol):
    """Who may ask what: operators for admin commands, the ignore list for everyone."""

    def is_operator(self, sender: Sender) -> bool: ...

    def is_ignored(self, sender: Sender) -> bool: ...


class _Open:
    """No operators, nobody ignored: the gate of a bot without ``[admin]``."""

    def is_operator(self, sender: Sender) -> bool:
        return False

    def is_ignored(self, sender: Sender) -> bool:
        return False


NOT_OPERATOR = "You are not an operator of this bot."


class Commands:
    """The set of commands the bot answers, with ``help`` built in.

    ``gate`` says who is an operator and who is ignored: the framework checks both before a
    command runs, so no command repeats the check."""

    def __init__(self, commands: Iterable[Command] = (), gate: Gate | None = None) -> None:
        self._commands: dict[str, Command] = {}
        self.gate: Gate = gate or _Open()
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

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def _help(self, request: Request) -> str:
        name = request.args.split(" ", 1)[0].lower() if request.args else ""
        if name:
            command = self._commands.get(name)
            if command is None:
                return f"I don't know {name!r}. Commands: {self._names()}."
            if command.admin:
                return f"{command.usage} — {command.summary} (operators only)"
            return f"{command.usage} — {command.summary}"
        admin = ", ".join(c.name for c in self if c.admin and not c.hidden)
        extra = f" Operator commands: {admin}." if admin else ""
        return (f"Commands: {self._names()}.{extra} Say '{request.how}help <command>' "
                "for more.")

    def _names(self) -> str:
        return ", ".join(c.name for c in self if not c.hidden and not c.admin)

    def run(self, name: str, request: Request) -> Deferred[list[str]]:
        """Run command ``name``; always fires with the reply lines, never errbacks.  An ignored
        sender gets none; an admin command from anyone else gets a plain refusal."""
        if self.gate.is_ignored(request):
            log.info("Ignored {name!r} from {mask}", name=name, mask=request.hostmask)
            return Deferred.fromCoroutine(_const([]))
        command = self._commands.get(name)
        if command is not None and command.admin and not self.gate.is_operator(request):
            log.warn("Refused admin command {name!r} from {mask} (account {account}): not an "
                     "operator", name=name, mask=request.hostmask, account=request.account)
            return Deferred.fromCoroutine(_const([NOT_OPERATOR]))
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


@dataclass(frozen=True)
class _Asker:
    hostmask: str
    account: str | None


class Dispatcher:
    """Hears what people say on IRC (a :class:`~mup.ircevents.MessageListener`) and answers
    the commands in it: addressing (``prefix``, ``nick:``, private), the per-user limit
    (``burst`` commands at once, then ``rate`` a second; one warning, then silence), the
    sender's account for commands that need it, and the reply to where it was asked."""

    def __init__(self, commands: Commands, clock: IReactorTime, *, prefix: str = "@",
                 burst: float = 5, rate: float = 0.5) -> None:
        self.commands = commands
        self.prefix = prefix
        self.limit = PerKeyLimit(burst, rate, clock)

    @classmethod
    def from_config(cls, commands: Commands, config: Config, clock: IReactorTime
                    ) -> Dispatcher:
        """With the ``[irc]`` keys ``prefix``, ``command_burst`` and ``command_rate``."""
        irc = config.irc
        return cls(commands, clock, prefix=irc.prefix, burst=irc.command_burst,
                   rate=irc.command_rate)

    def message_received(self, message: ChatMessage, link: ChatLink) -> None:
        parsed = parse_command(message.text, message.own_nick, self.prefix, message.private)
        if parsed is None:
            return
        nick = message.nick
        if self.commands.gate.is_ignored(_Asker(message.mask, message.account)):
            return  # no answer, and no "slow down" either
        lane = irc_lower(nick)  # one requester's answers wait behind each other, not others'
        allowed, wait = self.limit.check(lane)
        if not allowed:
            if wait is not None:
                link.say(nick, "Slow down, please: I'll answer you again in about "
                         f"{max(1, round(wait))}s.", notice=True, lane=lane)
            return
        name, args = parsed
        command = self.commands.get(name)
        how = "" if message.private else (self.prefix or f"{message.own_nick}: ")

        def run(account: str | None) -> Deferred[list[str]]:
            return self.commands.run(name, Request(
                nick=nick, args=args, channel=message.channel, hostmask=message.mask,
                account=account, how=how))

        if command is None or not command.wants_account or message.account_known:
            d = run(message.account)
        else:
            d = link.account_of(nick).addCallback(run)

        def reply(lines: list[str]) -> None:
            if message.channel is None:
                link.say(nick, lines, lane=lane)
            else:
                link.say(message.channel, lines, address=f"{nick}: ", lane=lane)

        d.addCallback(reply)
        d.addErrback(lambda f: log.failure("Command {name!r} from {nick} failed", f,
                                           name=name, nick=nick))
