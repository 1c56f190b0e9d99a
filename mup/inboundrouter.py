"""Where an inbound SMS goes on IRC, and who it is shown as coming from.

By the SMS's first word: ``#chan ...`` goes to that channel if the bot is configured for it
(otherwise to the default channel, with a note); ``nick ...`` goes to that person privately if
the nick is on IRC or in the directory; anything else goes to whoever last texted this number
through mup (within the reply window), else to the default channel.  A private message for
someone not on IRC right now goes to the default channel with a note saying for whom, as the
server would silently drop it.  A first word naming the bot itself or a services bot
(NickServ, ChanServ, ...) addresses nobody: such a message goes where an unaddressed one goes.
The sender is named by the directory; an unknown number is masked, or the message dropped, by
config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.logger import Logger

from mup.directory import Directory
from mup.gateway import InboundSMS
from mup.ircmsg import irc_lower
from mup.phone import InvalidNumber, canonical, mask_number

__all__ = ["SERVICE_NICKS", "ReplyLookup", "Route", "Router"]

log = Logger()

SERVICE_NICKS = frozenset({
    "nickserv", "chanserv", "memoserv", "operserv", "botserv", "hostserv", "helpserv",
    "groupserv", "saslserv", "infoserv", "statserv", "reportserv", "alis", "global"})
"""Services bots (folded): never the person an SMS is for."""

_NICK = re.compile(r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}")


@dataclass(frozen=True)
class Route:
    """Where one SMS goes and how it is shown."""

    target: str
    """A channel or a nick; empty when dropped."""
    text: str
    """What is shown after ``[SMS] <sender>`` (the addressing word removed)."""
    sender: str
    """The sender's directory nick, or the number masked."""
    sender_nick: str = ""
    """The directory nick, "" when the number is not in the directory."""
    note: str = ""
    """A line to add, e.g. why it did not go where it was addressed."""
    why: str = ""
    """For logs: which rule chose the target."""

    @property
    def dropped(self) -> bool:
        return not self.target

    @property
    def private(self) -> bool:
        return bool(self.target) and self.target[0] not in "#&+!"


class ReplyLookup(Protocol):
    """Who was last sent an SMS to a number, while a reply may still go to them
    (:class:`mup.replyroutes.ReplyRoutes`)."""

    def lookup(self, number: str) -> str | None:
        ...


class Router:
    """Decides a :class:`Route` for an :class:`InboundSMS`.

    ``directory``: the :class:`~mup.directory.Directory` (or None); ``routes``: a
    :class:`ReplyLookup` (or None);
    ``is_present(nick)`` says whether a nick is on IRC now; ``own_nick()`` is the bot's
    current nick (from the IRC connection's state)."""

    def __init__(self, *, channels: list[str], default_channel: str, unknown_senders: str,
                 region: str, directory: Directory | None, routes: ReplyLookup | None,
                 is_present: Callable[[str], bool],
                 own_nick: Callable[[], str] = lambda: "") -> None:
        self.channels = {irc_lower(c): c for c in channels}
        self.default_channel = default_channel or (channels[0] if channels else "")
        if not self.default_channel:
            raise ValueError("inbound SMS need [inbound] default_channel or [irc] channels")
        self.unknown_senders = unknown_senders
        self.region = region
        self.directory = directory
        self.routes = routes
        self.is_present = is_present
        self.own_nick = own_nick

    def number(self, raw: str) -> str:
        """The sender as E.164 where it parses, else as the gateway wrote it."""
        try:
            return canonical(raw, self.region)
        except InvalidNumber:
            return raw

    async def route(self, sms: InboundSMS) -> Route:
        number = self.number(sms.sender)
        sender_nick = await self._person_nick(number)
        reply_to = self.routes.lookup(number) if self.routes is not None else None
        sender = sender_nick or mask_number(number)
        if sender_nick == "" and self.unknown_senders == "drop" and not reply_to:
            return Route("", sms.text, sender, why="unknown sender, dropped by config")
        sender_nick = sender_nick or ""
        words = sms.text.strip().split(None, 1)
        first = words[0] if words else ""
        rest = words[1] if len(words) > 1 else ""
        if first[:1] in "#&" and len(first) > 1:
            channel = self.channels.get(irc_lower(first.rstrip(":,")))
            if channel is not None:
                return Route(channel, rest, sender, sender_nick, why="addressed to channel")
            return Route(self.default_channel, sms.text.strip(), sender, sender_nick,
                         note=f"(sent to {_clip(first)}, which is not one of my channels)",
                         why="addressed to an unknown channel")
        nick = first.rstrip(":,")
        if _NICK.fullmatch(nick) and not self._is_bot(nick) and await self._is_person(nick):
            return self._private(nick, rest, sender, sender_nick, "addressed to a nick")
        if reply_to:
            return self._private(reply_to, sms.text.strip(), sender, sender_nick,
                                 "reply to the last person who texted this number")
        return Route(self.default_channel, sms.text.strip(), sender, sender_nick,
                     why="default channel")

    def _private(self, nick: str, text: str, sender: str, sender_nick: str, why: str
                 ) -> Route:
        """To ``nick`` privately if on IRC now; otherwise the server would drop the message
        (no such nick) after confirming it, so it goes to the default channel, addressed."""
        if self.is_present(nick):
            return Route(nick, text, sender, sender_nick, why=why)
        return Route(self.default_channel, text, sender, sender_nick,
                     note=f"(for {nick}, who is not on IRC now)", why=why + ", absent")

    def _is_bot(self, nick: str) -> bool:
        """``nick`` is this bot or a services bot: it addresses nobody."""
        folded = irc_lower(nick)
        return folded in SERVICE_NICKS or folded == irc_lower(self.own_nick())

    async def _person_nick(self, number: str) -> str | None:
        """The sender's nick; "" when not in the directory; None when the directory failed
        (shown masked, but never dropped as unknown)."""
        if self.directory is None:
            return ""
        try:
            person = await self.directory.by_phone(number)
        except Exception as e:
            log.warn("directory lookup of {number} failed, showing it masked: {error}",
                     number=mask_number(number), error=e)
            return None
        return person.nick if person is not None and person.nick else ""

    async def _is_person(self, nick: str) -> bool:
        if self.is_present(nick):
            return True
        if self.directory is None:
            return False
        try:
            return await self.directory.by_nick(nick) is not None
        except Exception as e:
            log.warn("directory lookup of {nick} failed: {error}", nick=nick, error=e)
            return False


def _clip(word: str) -> str:
    return word if len(word) <= 50 else word[:49] + "…"
