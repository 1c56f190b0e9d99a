"""The bot's IRC presence: :class:`IRCService` keeps one connection up and offers the rest of mup
confirmed delivery, the bot's nick, who is present and their accounts.

The parts, each in its own module: the connection protocol (:mod:`mup.ircprotocol`), what the
bot knows of channels and accounts (:mod:`mup.ircstate`), the output queue with flood control
and confirmation (:mod:`mup.ircqueue`), the seam to whoever listens to people
(:mod:`mup.ircevents`, the command layer's :class:`~mup.commands.Dispatcher`) and the line
format (:mod:`mup.ircmsg`).  The service reconnects forever (``ClientService``, exponential
backoff with jitter) and logs why a connection failed once per change, naming host and port.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mup.config import Config, ConfigError
from mup.ircevents import ChatLink, ChatMessage, MessageListener
from mup.ircmsg import irc_lower, sanitize
from mup.ircprotocol import IRCProtocol, IRCSettings
from mup.ircqueue import NotDelivered, TargetRefused

__all__ = ["IRCProtocol", "IRCService", "IRCSettings", "NotDelivered", "TargetRefused",
           "retry_policy"]

log = Logger()


def retry_policy(max_delay: float) -> Callable[[int], float]:
    """Seconds to wait before reconnect attempt N: 1, 2, 4, ... up to ``max_delay``, plus up
    to a second of jitter so a fleet of bots does not reconnect in step."""
    return backoffPolicy(initialDelay=1.0, maxDelay=max_delay, factor=2.0, jitter=random.random)


def describe_endpoint(description: str) -> str:
    """``host:port (kind)`` from an endpoint string, for logs; other options (file names of
    keys and certificates) are left out."""
    kind, _, rest = description.partition(":")
    parts = re.split(r"(?<!\\):", rest)
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    plain = [p for p in parts if "=" not in p]
    if kind == "unix":
        return named.get("path") or (plain[0] if plain else description)
    host = named.get("host") or (plain[0] if plain else "?")
    port = named.get("port") or (plain[1] if len(plain) > 1 else "?")
    return f"{host}:{port} ({kind})"


def connect_reason(failure: Failure) -> str:
    """Why a connection attempt failed or was dropped, in words an operator can act on."""
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return "timed out"
    if failure.check(error.DNSLookupError):
        return "host name not found"
    text = failure.getErrorMessage()
    if "certificate" in text.lower():
        return f"TLS certificate rejected: {text}"
    return text or (failure.type.__name__ if failure.type is not None else "unknown error")


@implementer(IStreamClientEndpoint)
class _DescribedEndpoint:
    """An endpoint that names itself ``host:port`` (ClientService logs it on every retry) and
    reports why a connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, where: str,
                 failed: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self.where = where
        self._failed = failed

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._endpoint.connect(factory)

        def report(failure: Failure) -> Failure:
            self._failed(failure)
            return failure

        return d.addErrback(report)

    def __repr__(self) -> str:
        return self.where

    __str__ = __repr__


class _IRCFactory(Factory):
    """Builds each connection with its settings, the service as its listener."""

    noisy = False  # the protocol logs registration and loss; not "Starting factory <...>"

    def __init__(self, settings: IRCSettings, service: IRCService, clock: IReactorTime) -> None:
        self.settings = settings
        self.service = service
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> IRCProtocol:
        return IRCProtocol(self.settings, self.service, self.clock)


class IRCService(MultiService):
    """The bot's IRC presence: connects, reconnects forever, and offers delivery with
    confirmation to the rest of mup.  What people say goes to ``listener`` (None: nobody
    listens, e.g. a bot that only delivers).  It is the
    :class:`~mup.ircprotocol.ConnectionListener` of each connection it makes.

    ``reactor``: for time and, unless ``endpoint`` is given, to connect through
    (``clientFromString`` takes the whole reactor, which has no one static type)."""

    def __init__(self, config: Config, listener: MessageListener | None, reactor: Any,
                 endpoint: IStreamClientEndpoint | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.setName("irc")
        self.config = config
        self.listener = listener
        self.reactor = reactor
        self.protocol: IRCProtocol | None = None
        self._waiting: list[Deferred[None]] = []
        self._state = ""
        """The last connection trouble logged: each is logged once, until it changes."""
        if endpoint is None:
            try:
                endpoint = clientFromString(reactor, config.irc.endpoint)
            except Exception as e:  # TypeError, ValueError, OSError, ... from the parsers
                detail = str(e) or type(e).__name__
                raise ConfigError(f"{config.path}: [irc] endpoint: cannot use "
                                  f"{config.irc.endpoint!r}: {detail}") from None
        self.where = describe_endpoint(config.irc.endpoint)
        endpoint = _DescribedEndpoint(endpoint, self.where, self._connect_failed)
        self._early_losses = 0
        """Connections lost before registering, in a row (TLS refused, banned, ...)."""
        policy = retry_policy(config.irc.reconnect_max_delay)
        # ClientService counts only failed connects; a server that accepts and then drops us
        # (a bad certificate, a ban) must back off too, or we would hammer it every 2 s.
        self.factory = _IRCFactory(IRCSettings.from_section(config.irc), self, reactor)
        self.client = ClientService(
            endpoint, self.factory, clock=reactor,
            retryPolicy=lambda attempt: policy(attempt + max(0, self._early_losses - 1)))
        self.client.setServiceParent(self)

    @property
    def connected(self) -> bool:
        """Registered, and the configured channels joined (or given up on), right now."""
        return self.protocol is not None and self.protocol.ready

    def when_connected(self) -> Deferred[None]:
        """Fires now if connected, else on the next registration."""
        if self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def deliver(self, target: str, text: str | list[str], notice: bool = False
                ) -> Deferred[None]:
        """Send text to a nick or channel; fire once the server has processed every line.

        Errbacks with :class:`NotDelivered` when not connected, or when the connection is lost
        before the server confirms (try again later); with :class:`TargetRefused` (a
        ValueError) when the server refused the target (no such nick or channel, cannot send
        there)."""
        protocol = self.protocol
        if protocol is None or not protocol.ready:
            return fail(NotDelivered("not connected to IRC"))
        target = sanitize(target).strip()
        if not target or " " in target:
            return fail(ValueError(f"not an IRC target: {target!r}"))
        return protocol.deliver(target, text, notice=notice)

    @property
    def nick(self) -> str:
        """The bot's nick on IRC now (the configured one while not connected)."""
        return self.protocol.nick if self.protocol is not None else self.config.irc.nick

    def is_present(self, nick: str) -> bool:
        """``nick`` is in one of the bot's channels now."""
        return self.connected and self.protocol is not None and self.protocol.is_present(nick)

    def account_of(self, nick: str) -> Deferred[str | None]:
        """The services account ``nick`` is logged in to, or None (not logged in, unknown, or
        not connected)."""
        if self.protocol is None or not self.protocol.registered:
            return succeed(None)
        return self.protocol.account_of(nick)

    # -- channels (the admin commands' ChannelControl) -----------------------------------------

    @property
    def channels(self) -> dict[str, str | None]:
        """The channels the bot stays in (rejoined after a kick or a reconnect), with keys."""
        keys = {irc_lower(c): k for c, k in self.factory.settings.channel_keys}
        return {c: keys.get(irc_lower(c)) for c in self.factory.settings.channels}

    def set_channels(self, wanted: dict[str, str | None], reason: str | None = None) -> None:
        """Stay in exactly ``wanted`` from now on: join what is new, part what is gone (saying
        ``reason``)."""
        before = {irc_lower(c): c for c in self.factory.settings.channels}
        after = {irc_lower(c) for c in wanted}
        self.factory.settings = replace(
            self.factory.settings, channels=tuple(wanted),
            channel_keys=tuple((c, k) for c, k in wanted.items() if k))
        protocol = self.protocol
        if protocol is None:
            return
        protocol.settings = self.factory.settings
        if not protocol.registered:
            return
        for channel in wanted:
            if irc_lower(channel) not in before:
                protocol.join(channel)
        for folded, channel in before.items():
            if folded not in after:
                protocol.send("PART", channel, *([reason] if reason else []))

    def join(self, channel: str, key: str | None = None) -> None:
        """Join ``channel`` now (with ``key``) and stay, until :meth:`part`."""
        wanted = {c: k for c, k in self.channels.items() if irc_lower(c) != irc_lower(channel)}
        wanted[channel] = key
        self.set_channels(wanted)

    def part(self, channel: str, reason: str | None = None) -> None:
        """Leave ``channel`` now (saying ``reason``) and stay out."""
        folded = irc_lower(channel)
        if not any(irc_lower(c) == folded for c in self.channels):
            # Not one we stay in (joined by hand, say): part it all the same.
            if self.protocol is not None and self.protocol.registered:
                self.protocol.send("PART", channel, *([reason] if reason else []))
            return
        self.set_channels({c: k for c, k in self.channels.items() if irc_lower(c) != folded},
                          reason)

    def stopService(self) -> Deferred[None] | None:
        if self.protocol is not None:
            self.protocol.quit()
        stopped: Deferred[None] | None = super().stopService()  # type: ignore[no-untyped-call]
        return stopped

    # -- ConnectionListener: what the protocol reports ---------------------------------------

    def connection_made(self, protocol: IRCProtocol) -> None:
        self.protocol = protocol

    def connection_ready(self, protocol: IRCProtocol) -> None:
        self.protocol = protocol
        self._early_losses = 0
        self._state = ""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def connection_lost(self, protocol: IRCProtocol, reason: Failure) -> None:
        if self.protocol is protocol:
            self.protocol = None
        if not protocol.registered:
            self._early_losses += 1
            self._trouble(f"The IRC server {self.where} dropped the connection before "
                          f"registration: {connect_reason(reason)}")

    def message_received(self, message: ChatMessage, link: ChatLink) -> None:
        if self.listener is not None:
            self.listener.message_received(message, link)

    # -- connection trouble, logged once per change -----------------------------------------

    def _trouble(self, state: str) -> None:
        """Log a connection problem once, not on every retry."""
        if state != self._state:
            self._state = state
            log.warn("{state}; retrying with backoff", state=state)

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError, error.ConnectingCancelledError):
            return  # stopping
        self._trouble(f"Cannot connect to the IRC server {self.where}: "
                      f"{connect_reason(failure)}")
