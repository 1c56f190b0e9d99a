"""The seam between the IRC transport and what listens to it (the command layer).

IRC reports "a message from this nick, with this mask and account, in this place"
(:class:`ChatMessage`) to a :class:`MessageListener`, with a :class:`ChatLink` to answer
through.  Neither side knows the other's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

__all__ = ["ChatLink", "ChatMessage", "MessageListener"]


@dataclass(frozen=True)
class ChatMessage:
    """One PRIVMSG from a person (not the server, not CTCP, not the bot itself)."""

    nick: str
    """The sender's nick now."""
    mask: str
    """``nick!user@host`` as the server relayed it (for hostmask permissions and ignores)."""
    text: str
    channel: str | None
    """The channel it was said in, or None for a private message to the bot."""
    own_nick: str
    """The bot's nick now (for ``mup: poke x`` addressing)."""
    account: str | None = None
    """The sender's services account; None: not logged in, or not known."""
    account_known: bool = False
    """``account`` is current (account-tag on this message, or kept by account-notify); when
    False, a listener that needs it asks :meth:`ChatLink.account_of`."""

    @property
    def private(self) -> bool:
        return self.channel is None


class ChatLink(Protocol):
    """What a listener may do on the connection the message came from."""

    def say(self, target: str, text: str | list[str], notice: bool = False,
            address: str = "", lane: str = "") -> int:
        """Queue ``text`` to ``target`` (split to fit, ``address`` before each line) behind the
        flood control.  Lines of one ``lane`` (e.g. one requester) go in order; lanes take
        turns, so one flood does not hold up the rest.  Returns the lines queued."""
        ...

    def account_of(self, nick: str) -> Deferred[str | None]:
        """The services account of ``nick`` (asking the server if need be), or None."""
        ...


class MessageListener(Protocol):
    """Hears what people say to the bot."""

    def message_received(self, message: ChatMessage, link: ChatLink) -> None:
        ...
