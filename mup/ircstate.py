"""What the bot knows of IRC right now: its channels, who is in them, and their accounts.

Pure bookkeeping, no I/O: the connection protocol (:mod:`mup.ircprotocol`) feeds it what the
server says (JOIN, PART, NAMES, account-tag, ...) and asks it questions.  Nicks and channels are
kept folded (``irc_lower``).  Only people sharing a channel with the bot are remembered, so the
maps stay bounded however many people talk to the bot.
"""

from __future__ import annotations

from mup.ircmsg import irc_lower

__all__ = ["ChannelState", "MEMBER_PREFIXES"]

MEMBER_PREFIXES = "~&@%+!."
"""Status prefixes of nicks in a NAMES reply (``@op``, ``+voice``, ...)."""


class ChannelState:
    """The bot's channels and their members, and the services account of each member."""

    def __init__(self) -> None:
        self.channels: dict[str, set[str]] = {}
        """Joined channels (folded) -> folded nicks in them."""
        self.accounts: dict[str, str | None] = {}
        """Folded nick -> services account (None: known not logged in)."""

    def is_present(self, nick: str) -> bool:
        """``nick`` shares a channel with the bot."""
        nick = irc_lower(nick)
        return any(nick in members for members in self.channels.values())

    def joined(self, channel: str, nick: str, own: bool) -> None:
        """``nick`` joined ``channel``; ``own``: the bot did (a fresh member list)."""
        channel, nick = irc_lower(channel), irc_lower(nick)
        if own:
            self.channels[channel] = {nick}
        elif channel in self.channels:
            self.channels[channel].add(nick)

    def names(self, channel: str, names: list[str]) -> None:
        """A NAMES reply (with ``multi-prefix`` or ``userhost-in-names`` decorations)."""
        members = self.channels.get(irc_lower(channel))
        if members is None:
            return
        for name in names:
            members.add(irc_lower(name.lstrip(MEMBER_PREFIXES).split("!", 1)[0]))

    def parted(self, channel: str, nick: str, own: bool) -> None:
        """``nick`` left ``channel`` (PART or KICK); ``own``: the bot did."""
        channel, nick = irc_lower(channel), irc_lower(nick)
        if own:
            self.channels.pop(channel, None)
        elif channel in self.channels:
            self.channels[channel].discard(nick)
            self._forget(nick)

    def quit(self, nick: str) -> None:
        nick = irc_lower(nick)
        for members in self.channels.values():
            members.discard(nick)
        self.accounts.pop(nick, None)

    def renamed(self, old: str, new: str) -> None:
        old, new = irc_lower(old), irc_lower(new)
        for members in self.channels.values():
            if old in members:
                members.discard(old)
                members.add(new)
        if old in self.accounts:
            self.accounts[new] = self.accounts.pop(old)

    def set_account(self, nick: str, account: str) -> None:
        """``account`` as the server writes it: ``*`` or ``0`` (or empty) for none."""
        self.accounts[irc_lower(nick)] = None if account in ("*", "0", "") else account

    def remember_account(self, nick: str, account: str | None) -> None:
        """A WHOIS answer, kept only for someone in a channel with the bot."""
        if self.is_present(nick):
            self.accounts[irc_lower(nick)] = account

    def known_account(self, nick: str) -> tuple[bool, str | None]:
        """``(known, account)`` from the map alone."""
        key = irc_lower(nick)
        if key in self.accounts:
            return True, self.accounts[key]
        return False, None

    def _forget(self, nick: str) -> None:
        if not any(nick in members for members in self.channels.values()):
            self.accounts.pop(nick, None)
