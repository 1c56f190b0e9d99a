"""The IRC client: one connection (:class:`IRCProtocol`) and the service that keeps it up.

Written on :class:`~twisted.internet.protocol.Protocol` rather than Twisted's ``IRCClient`` so
that odd bytes never crash it (every line is decoded with a fallback), IRCv3 tags are parsed,
and output goes through one token-bucket queue.  :class:`IRCService` reconnects forever
(``ClientService``, exponential backoff with jitter) and offers the rest of mup
:meth:`IRCService.deliver`, whose Deferred fires only once the server has processed the lines.
"""

from __future__ import annotations

import base64
import itertools
import random
import re
import socket
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mup.commands import Commands, Request, parse_command
from mup.config import Config, ConfigError
from mup.ircmsg import Message, decode, format_line, irc_lower, parse, sanitize, split_message
from mup.ircqueue import NotDelivered, OutputQueue, Refused
from mup.ratelimit import TokenBucket

__all__ = ["IRCProtocol", "IRCService", "NotDelivered", "Refused"]

log = Logger()

WANTED_CAPS = ("account-tag", "account-notify", "extended-join", "message-tags", "server-time",
               "multi-prefix")
"""Capabilities requested when the server offers them (``sasl`` too, when configured)."""

MAX_LINE = 512

"""Bytes in an IRC line, CR LF included, not counting tags."""
MAX_BUFFER = 64 * 1024
"""Bytes of incoming data without a line break before the partial line is thrown away."""
WHOIS_TIMEOUT = 10.0
JOIN_WAIT = 10.0
"""Seconds to wait for JOIN confirmations before calling the bot connected anyway."""
JOIN_RETRY = 60.0
REGAIN_INTERVAL = 30.0
MAX_USER_BUCKETS = 1000
_MEMBER_PREFIXES = "~&@%+!."
_SASL_FAILURES = {"902", "904", "905", "906", "907", "908"}


class IRCProtocol(Protocol):
    """One IRC connection: registration (CAP, SASL), channels, accounts, commands, output."""

    def __init__(self, service: IRCService) -> None:
        self.service = service
        self.settings = service.config.irc
        self.clock = service.reactor
        self.commands = service.commands
        s = self.settings
        self.nicks = [s.nick, *s.alternate_nicks]
        self.nick = s.nick
        self.registered = False
        self.ready = False
        self.offered_caps: dict[str, str] = {}
        self.enabled_caps: set[str] = set()
        self.account: str | None = None
        """The bot's own services account, once logged in."""
        self.hostmask: str | None = None
        """The bot's own ``nick!user@host`` as the server relays it, once seen."""
        self.channels: dict[str, set[str]] = {}
        """Joined channels (folded) -> folded nicks in them."""
        self.accounts: dict[str, str | None] = {}
        """Folded nick -> services account (None: known not logged in)."""
        self._buffer = b""
        self.queue = OutputQueue(self._write, TokenBucket(s.line_burst, s.line_rate, self.clock),
                                 self.clock)
        self._user_buckets: dict[str, TokenBucket] = {}
        self._warned: set[str] = set()
        self._tokens = itertools.count(1)
        self._whois: dict[str, tuple[list[Deferred[str | None]], list[str | None],
                                     IDelayedCall]] = {}
        self._cap_ls: list[str] = []
        self._sasl_mechanism = self._choose_sasl()
        self._sasl_done = False
        self._nick_attempt = 0
        self._pending_joins: set[str] = set()
        self._timers: dict[str, IDelayedCall] = {}
        self._lost = False
        self._quickack: Any = None

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.service._made(self)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # pragma: no cover - not a TCP socket after all
                pass
        self._quickack = self._find_quickack()
        s = self.settings
        if s.password:
            self.send_now("PASS", s.password)
        self.send_now("CAP", "LS", "302")
        self.send_now("NICK", self.nick)
        self.send_now("USER", s.username, "0", "*", s.realname)
        self._later("register", max(s.ping_timeout, 10.0), self._register_timeout)
        self._later("idle", s.ping_interval, self._idle)

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason or Failure(ConnectionError("connection lost"))
        self._lost = True
        self.ready = False
        for call in list(self._timers.values()):
            if call.active():
                call.cancel()
        self._timers.clear()
        self.queue.close(reason.getErrorMessage())
        whois, self._whois = self._whois, {}
        for waiters, _found, timer in whois.values():
            if timer.active():
                timer.cancel()
            for d in waiters:
                d.callback(None)
        log.info("IRC connection lost: {reason}", reason=reason.getErrorMessage())
        self.service._lost(self, reason)

    def _find_quickack(self) -> Any:
        """A function re-arming TCP_QUICKACK (Linux) on our socket, or None.

        Servers such as ngircd do not set TCP_NODELAY: if our kernel delays its ACK, the
        server's next line waits behind Nagle for up to 40 ms.  Quick ACKs avoid that; the
        kernel clears the flag now and then, so it is set again after each read."""
        option = getattr(socket, "TCP_QUICKACK", None)
        get_handle = getattr(self.transport, "getHandle", None)
        if option is None or get_handle is None:
            return None
        try:
            handle = get_handle()
            setsockopt = handle.setsockopt
            setsockopt(socket.IPPROTO_TCP, option, 1)
        except (AttributeError, OSError):
            return None
        return lambda: setsockopt(socket.IPPROTO_TCP, option, 1)

    def _later(self, name: str, delay: float, f: Any, *args: Any) -> None:
        """Run ``f`` after ``delay`` seconds, replacing any pending timer of the same name."""
        old = self._timers.pop(name, None)
        if old is not None and old.active():
            old.cancel()

        def run() -> None:
            self._timers.pop(name, None)
            f(*args)

        self._timers[name] = self.clock.callLater(delay, run)

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _register_timeout(self) -> None:
        if not self.registered:
            log.error("IRC registration did not finish in time; reconnecting")
            self.transport.abortConnection()

    def _idle(self) -> None:
        """Nothing heard for ``ping_interval``: ask the server, and give up if it stays mute."""
        self.send_now("PING", f"mup-keepalive-{next(self._tokens)}")
        self._later("dead", self.settings.ping_timeout, self._dead)

    def _dead(self) -> None:
        log.error("IRC server did not answer for {s}s; reconnecting",
                  s=self.settings.ping_interval + self.settings.ping_timeout)
        self.transport.abortConnection()

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._quickack is not None:
            try:
                self._quickack()
            except OSError:
                self._quickack = None
        idle = self._timers.get("idle")
        if idle is not None and idle.active():
            idle.reset(self.settings.ping_interval)
        else:
            self._later("idle", self.settings.ping_interval, self._idle)
        if "dead" in self._timers:
            self._cancel("dead")
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > MAX_BUFFER:
            log.warn("IRC server sent {n} bytes without a line break; dropped", n=len(self._buffer))
            self._buffer = b""
        for raw in lines:
            if self._lost:
                return
            self.rawLineReceived(raw.rstrip(b"\r"))

    def rawLineReceived(self, raw: bytes) -> None:
        """Handle one line; a bad line is logged, never fatal."""
        if not raw.strip():
            return
        try:
            message = parse(decode(raw))
        except ValueError:
            log.warn("Unparsable IRC line: {raw!r}", raw=raw[:200])
            return
        try:
            self.messageReceived(message)
        except Exception:
            log.failure("Error handling IRC line {raw!r}", raw=raw[:200])

    def messageReceived(self, msg: Message) -> None:
        handler = getattr(self, f"irc_{msg.command}", None)
        if handler is not None:
            handler(msg)
        # With account-tag every message from a user says its account (no tag: none).  Only
        # people in our channels are remembered, so the map stays bounded.
        if "account-tag" in self.enabled_caps and "!" in msg.prefix and \
                msg.command != "QUIT" and self.is_present(msg.nick) and \
                irc_lower(msg.nick) != irc_lower(self.nick):
            self._set_account(msg.nick, msg.tags.get("account", "*"))

    # -- output ----------------------------------------------------------------------------

    def send_now(self, command: str, *params: str) -> None:
        """Write a line at once, bypassing the queue (registration, PONG, keepalive)."""
        if not self._lost:
            self.transport.write(_encode(format_line(command, *params)))

    def _write(self, line: bytes) -> None:
        if not self._lost:
            self.transport.write(line)

    def send(self, command: str, *params: str, lane: str = "") -> None:
        """Queue a line behind the flood control, in ``lane`` (the bot's own by default)."""
        trailing = command in ("PRIVMSG", "NOTICE")
        self.queue.send(_encode(format_line(command, *params, trailing=trailing)), lane)

    def _text_limit(self, command: str, target: str) -> int:
        """Bytes of text that fit in one ``command target :text`` line as the server relays it."""
        if self.hostmask is not None:
            prefix = self.hostmask
        else:  # not seen yet: assume a "~user" ident and the longest host name
            prefix = f"{self.nick}!~{self.settings.username[:10]}@{'h' * 63}"
        used = len(f":{prefix} {command} {target} :\r\n".encode())
        return max(MAX_LINE - used, 16)

    def _lines(self, target: str, text: str | list[str], notice: bool, address: str
               ) -> list[bytes]:
        command = "NOTICE" if notice else "PRIVMSG"
        limit = self._text_limit(command, target) - len(address.encode())
        return [_encode(format_line(command, target, address + line, trailing=True))
                for item in ([text] if isinstance(text, str) else text)
                for line in split_message(item, limit)]

    def say(self, target: str, text: str | list[str], notice: bool = False,
            address: str = "", lane: str = "") -> int:
        """Queue text to ``target`` in ``lane``, split to fit; ``address`` (``"nick: "``)
        starts each line.  Returns the number of lines queued."""
        lines = self._lines(target, text, notice, address)
        self.queue.send_lines(lines, lane)
        return len(lines)

    def deliver(self, target: str, text: str | list[str], notice: bool = False
                ) -> Deferred[None]:
        """Queue text to ``target`` in the deliveries' lane, confirmed by a PING; see
        :meth:`IRCService.deliver`."""
        return self.queue.deliver(self._lines(target, text, notice, ""), irc_lower(target))

    def _refused(self, msg: Message) -> None:
        """ERR_NOSUCHNICK and friends: remember them for deliveries to that target."""
        why = msg.params[-1] if msg.params else ""
        self.queue.refused(irc_lower(msg.param(1)), f"{msg.param(1)}: {why} ({msg.command})")

    # -- registration and capabilities -----------------------------------------------------

    def _choose_sasl(self) -> str:
        s = self.settings
        if s.sasl_mechanism == "EXTERNAL":
            return "EXTERNAL"
        if s.sasl_username and s.sasl_password:
            return "PLAIN"
        return ""

    def irc_CAP(self, msg: Message) -> None:
        sub = msg.param(1).upper()
        if sub == "LS":
            more = len(msg.params) > 3 and msg.param(2) == "*"
            self._cap_ls.append(msg.params[-1])
            if more:
                return
            for item in " ".join(self._cap_ls).split():
                name, _, value = item.partition("=")
                self.offered_caps[name] = value
            self._cap_ls = []
            if self.registered:
                return
            wanted = [c for c in WANTED_CAPS if c in self.offered_caps]
            if self._sasl_mechanism and "sasl" in self.offered_caps:
                mechanisms = self.offered_caps["sasl"]
                if not mechanisms or self._sasl_mechanism in mechanisms.split(","):
                    wanted.append("sasl")
                else:
                    log.error("The server does not offer SASL {m} (only {offered})",
                              m=self._sasl_mechanism, offered=mechanisms)
            elif self._sasl_mechanism:
                log.error("The server does not offer SASL; trying NickServ instead")
            if wanted:
                self.send_now("CAP", "REQ", " ".join(wanted))
            else:
                self.send_now("CAP", "END")
        elif sub == "ACK":
            for name in msg.params[-1].split():
                if name.startswith("-"):
                    self.enabled_caps.discard(name[1:])
                else:
                    self.enabled_caps.add(name)
            if self.registered:
                return
            if "sasl" in self.enabled_caps and self._sasl_mechanism and not self._sasl_done:
                self.send_now("AUTHENTICATE", self._sasl_mechanism)
            else:
                self.send_now("CAP", "END")
        elif sub == "NAK":
            log.warn("The server refused capabilities: {caps}", caps=msg.params[-1])
            if not self.registered:
                self.send_now("CAP", "END")
        elif sub == "DEL":
            for name in msg.params[-1].split():
                self.enabled_caps.discard(name)
                self.offered_caps.pop(name, None)
        elif sub == "NEW":
            new = [c for c in msg.params[-1].split()
                   if c.split("=", 1)[0] in WANTED_CAPS and c not in self.enabled_caps]
            if new:
                self.send_now("CAP", "REQ", " ".join(c.split("=", 1)[0] for c in new))

    def irc_AUTHENTICATE(self, msg: Message) -> None:
        if msg.param(0) != "+" or not self._sasl_mechanism:
            return
        if self._sasl_mechanism == "PLAIN":
            s = self.settings
            raw = f"{s.sasl_username}\0{s.sasl_username}\0{s.sasl_password}".encode()
            payload = base64.b64encode(raw).decode("ascii")
        else:
            payload = ""
        chunks = [payload[i:i + 400] for i in range(0, len(payload), 400)]
        if not chunks or len(chunks[-1]) == 400:
            chunks.append("+")
        for chunk in chunks:
            self.send_now("AUTHENTICATE", chunk)

    def irc_900(self, msg: Message) -> None:  # RPL_LOGGEDIN
        self.account = msg.param(2) or None
        log.info("Logged in to services as {account}", account=self.account)

    def irc_901(self, msg: Message) -> None:  # RPL_LOGGEDOUT
        self.account = None

    def irc_903(self, msg: Message) -> None:  # RPL_SASLSUCCESS
        self._sasl_done = True
        if not self.registered:
            self.send_now("CAP", "END")

    def _sasl_failed(self, msg: Message) -> None:
        if self._sasl_done:
            return
        self._sasl_done = True
        log.error("SASL {mechanism} login failed ({code}: {text}); continuing without it",
                  mechanism=self._sasl_mechanism, code=msg.command, text=msg.params[-1:])
        if not self.registered:
            self.send_now("CAP", "END")

    irc_902 = irc_904 = irc_905 = irc_906 = irc_907 = irc_908 = _sasl_failed

    def irc_001(self, msg: Message) -> None:
        self.registered = True
        self._cancel("register")
        self.nick = msg.param(0, self.nick)
        welcome = msg.params[-1].split()[-1:] if len(msg.params) > 1 else []
        if welcome and welcome[0].startswith(self.nick + "!") and "@" in welcome[0]:
            self.hostmask = welcome[0]  # many servers greet us with our full mask
        log.info("Registered on IRC as {nick}", nick=self.nick)
        s = self.settings
        if s.nickserv_password and self.account is None:
            account = s.sasl_username or s.nick
            self.send("PRIVMSG", "NickServ", f"IDENTIFY {account} {s.nickserv_password}")
        if irc_lower(self.nick) != irc_lower(s.nick):
            self._later("regain", REGAIN_INTERVAL, self._regain)
        self._pending_joins = {irc_lower(c) for c in s.channels}
        for channel in s.channels:
            self.send("JOIN", channel)
        if self._pending_joins:
            self._later("ready", JOIN_WAIT, self._mark_ready)
        else:
            self._mark_ready()

    def _mark_ready(self) -> None:
        self._cancel("ready")
        if not self.ready and not self._lost:
            self.ready = True
            self.service._ready(self)

    def _join_settled(self, channel: str) -> None:
        self._pending_joins.discard(irc_lower(channel))
        if not self._pending_joins and self.registered:
            self._mark_ready()

    # -- nicks -----------------------------------------------------------------------------

    def _nick_unavailable(self, msg: Message) -> None:
        if self.registered:
            return  # a regain attempt failed; try again later
        self._nick_attempt += 1
        if self._nick_attempt < len(self.nicks):
            self.nick = self.nicks[self._nick_attempt]
        else:
            self.nick = f"{self.settings.nick[:12]}{random.randint(100, 999)}"
        log.warn("Nick {taken} is unavailable; trying {nick}", taken=msg.param(1),
                 nick=self.nick)
        self.send_now("NICK", self.nick)

    irc_432 = irc_433 = irc_436 = _nick_unavailable

    def _regain(self) -> None:
        wanted = self.settings.nick
        if irc_lower(self.nick) != irc_lower(wanted):
            self.send("NICK", wanted)
            self._later("regain", REGAIN_INTERVAL, self._regain)

    def irc_NICK(self, msg: Message) -> None:
        old, new = irc_lower(msg.nick), irc_lower(msg.param(0))
        if old == irc_lower(self.nick):
            self.nick = msg.param(0)
            if self.hostmask is not None:
                self.hostmask = self.nick + self.hostmask[self.hostmask.index("!"):]
            if new == irc_lower(self.settings.nick):
                self._cancel("regain")
                log.info("Regained nick {nick}", nick=self.nick)
        elif old == irc_lower(self.settings.nick):
            self._regain()
        for members in self.channels.values():
            if old in members:
                members.discard(old)
                members.add(new)
        if old in self.accounts:
            self.accounts[new] = self.accounts.pop(old)

    # -- channels --------------------------------------------------------------------------

    def irc_JOIN(self, msg: Message) -> None:
        channel = irc_lower(msg.param(0))
        nick = irc_lower(msg.nick)
        if "extended-join" in self.enabled_caps and len(msg.params) >= 2:
            self._set_account(msg.nick, msg.param(1))
        if nick == irc_lower(self.nick):
            self.hostmask = msg.prefix if "!" in msg.prefix else self.hostmask
            self.channels[channel] = {nick}
            log.info("Joined {channel}", channel=msg.param(0))
            self._join_settled(channel)
        elif channel in self.channels:
            self.channels[channel].add(nick)

    def irc_353(self, msg: Message) -> None:  # RPL_NAMREPLY
        members = self.channels.get(irc_lower(msg.param(-2)))
        if members is None:
            return
        for name in msg.params[-1].split():
            members.add(irc_lower(name.lstrip(_MEMBER_PREFIXES).split("!", 1)[0]))

    def _part(self, channel: str, nick: str) -> None:
        channel, nick = irc_lower(channel), irc_lower(nick)
        if nick == irc_lower(self.nick):
            self.channels.pop(channel, None)
        elif channel in self.channels:
            self.channels[channel].discard(nick)
            self._forget(nick)

    def irc_PART(self, msg: Message) -> None:
        self._part(msg.param(0), msg.nick)

    def irc_KICK(self, msg: Message) -> None:
        channel, victim = msg.param(0), msg.param(1)
        self._part(channel, victim)
        if irc_lower(victim) == irc_lower(self.nick) and self._configured(channel):
            log.warn("Kicked from {channel} by {by}: {why}; rejoining in {delay}s",
                     channel=channel, by=msg.nick, why=msg.param(2),
                     delay=self.settings.rejoin_delay)
            self._later(f"join {irc_lower(channel)}", self.settings.rejoin_delay,
                        self.send, "JOIN", channel)

    def irc_QUIT(self, msg: Message) -> None:
        nick = irc_lower(msg.nick)
        for members in self.channels.values():
            members.discard(nick)
        self.accounts.pop(nick, None)
        if nick == irc_lower(self.settings.nick) and self.registered:
            self._regain()

    def _forget(self, nick: str) -> None:
        if not any(nick in members for members in self.channels.values()):
            self.accounts.pop(nick, None)

    def irc_INVITE(self, msg: Message) -> None:
        channel = msg.param(1)
        if self._configured(channel):
            log.info("Invited to {channel} by {nick}; joining", channel=channel, nick=msg.nick)
            self.send("JOIN", channel)
        else:
            log.info("Ignored an invite to {channel} from {nick} (not configured)",
                     channel=channel, nick=msg.nick)

    def _join_failed(self, msg: Message) -> None:
        channel = msg.param(1)
        if not self._configured(channel):
            return
        log.warn("Cannot join {channel}: {why}; retrying in {delay}s", channel=channel,
                 why=msg.params[-1], delay=JOIN_RETRY)
        self._join_settled(channel)
        self._later(f"join {irc_lower(channel)}", JOIN_RETRY, self.send, "JOIN", channel)

    irc_405 = irc_471 = irc_473 = irc_474 = irc_475 = irc_476 = irc_477 = \
        irc_489 = _join_failed

    def irc_437(self, msg: Message) -> None:  # nick or channel temporarily unavailable
        if msg.param(1)[:1] in "#&+!":
            self._join_failed(msg)
        else:
            self._nick_unavailable(msg)

    def _configured(self, channel: str) -> bool:
        return irc_lower(channel) in {irc_lower(c) for c in self.settings.channels}

    def irc_396(self, msg: Message) -> None:  # RPL_HOSTHIDDEN: our displayed host changed
        if self.hostmask is not None:
            self.hostmask = self.hostmask.rsplit("@", 1)[0] + "@" + msg.param(1)

    def irc_CHGHOST(self, msg: Message) -> None:
        if irc_lower(msg.nick) == irc_lower(self.nick):
            self.hostmask = f"{self.nick}!{msg.param(0)}@{msg.param(1)}"

    def is_present(self, nick: str) -> bool:
        nick = irc_lower(nick)
        return any(nick in members for members in self.channels.values())

    # -- accounts --------------------------------------------------------------------------

    def _set_account(self, nick: str, account: str) -> None:
        self.accounts[irc_lower(nick)] = None if account in ("*", "0", "") else account

    def irc_ACCOUNT(self, msg: Message) -> None:
        self._set_account(msg.nick, msg.param(0))

    def account_of(self, nick: str) -> Deferred[str | None]:
        """The services account of ``nick``: from the map when the server keeps it current
        (account-notify and a shared channel), else by WHOIS."""
        key = irc_lower(nick)
        if key in self.accounts and "account-notify" in self.enabled_caps and \
                self.is_present(nick):
            return succeed(self.accounts[key])
        return self._whois_account(nick)

    def _whois_account(self, nick: str) -> Deferred[str | None]:
        key = irc_lower(nick)
        d: Deferred[str | None] = Deferred()
        if key in self._whois:
            self._whois[key][0].append(d)
            return d
        timer = self.clock.callLater(WHOIS_TIMEOUT, self._whois_done, key)
        self._whois[key] = ([d], [None], timer)
        self.send("WHOIS", nick)
        return d

    def irc_330(self, msg: Message) -> None:  # RPL_WHOISACCOUNT
        key = irc_lower(msg.param(1))
        if key in self._whois:
            self._whois[key][1][0] = msg.param(2)

    def irc_318(self, msg: Message) -> None:  # RPL_ENDOFWHOIS
        key = irc_lower(msg.param(1))
        if key in self._whois:
            account = self._whois[key][1][0]
            if self.is_present(key):
                self.accounts[key] = account
            self._whois_done(key)

    def irc_401(self, msg: Message) -> None:  # ERR_NOSUCHNICK
        self._refused(msg)
        self._whois_done(irc_lower(msg.param(1)))

    def _whois_done(self, key: str) -> None:
        entry = self._whois.pop(key, None)
        if entry is None:
            return
        waiters, found, timer = entry
        if timer.active():
            timer.cancel()
        for d in waiters:
            d.callback(found[0])

    # -- server chatter --------------------------------------------------------------------

    def irc_PING(self, msg: Message) -> None:
        self.send_now("PONG", msg.params[-1] if msg.params else "")

    def irc_PONG(self, msg: Message) -> None:
        self.queue.pong(msg.params[-1] if msg.params else "")

    irc_404 = irc_406 = _refused

    def irc_403(self, msg: Message) -> None:  # ERR_NOSUCHCHANNEL: for a JOIN or a PRIVMSG
        self._refused(msg)
        self._join_failed(msg)

    def irc_ERROR(self, msg: Message) -> None:
        log.warn("IRC server says: {text}", text=msg.param(0))

    # -- commands --------------------------------------------------------------------------

    def irc_PRIVMSG(self, msg: Message) -> None:
        target, text = msg.param(0), msg.param(1)
        if not msg.prefix or "!" not in msg.prefix or text.startswith("\x01"):
            return  # server notices and CTCP are not commands
        nick = msg.nick
        if irc_lower(nick) == irc_lower(self.nick):
            return
        private = irc_lower(target) == irc_lower(self.nick)
        parsed = parse_command(text, self.nick, self.settings.prefix, private)
        if parsed is None:
            return
        if not self._allow(nick):
            return
        name, args = parsed
        channel = None if private else target
        command = self.commands.get(name)

        def run(acct: str | None) -> Deferred[list[str]]:
            how = "" if private else (self.settings.prefix or f"{self.nick}: ")
            request = Request(nick=nick, args=args, channel=channel, hostmask=msg.prefix,
                              account=acct, how=how)
            return self.commands.run(name, request)

        if command is None or not command.needs_account:
            d = run(None)
        elif "account-tag" in self.enabled_caps:  # the tag on this very message: current
            d = run(msg.tags.get("account") or None)
        else:
            d = self.account_of(nick).addCallback(run)

        def reply(lines: list[str]) -> None:
            if private:
                self.say(nick, lines, lane=irc_lower(nick))
            else:
                self.say(target, lines, address=f"{nick}: ", lane=irc_lower(nick))

        d.addCallback(reply)
        d.addErrback(lambda f: log.failure("Command {name!r} from {nick} failed", f,
                                           name=name, nick=nick))

    def _allow(self, nick: str) -> bool:
        """The per-user command limit: a burst, then a rate; one warning, then silence."""
        s = self.settings
        if s.command_rate == 0:
            return True
        key = irc_lower(nick)
        bucket = self._user_buckets.get(key)
        if bucket is None:
            if len(self._user_buckets) >= MAX_USER_BUCKETS:
                self._user_buckets = {k: b for k, b in self._user_buckets.items()
                                      if b.tokens < b.burst}
                self._warned &= self._user_buckets.keys()
            bucket = self._user_buckets[key] = TokenBucket(s.command_burst, s.command_rate,
                                                           self.clock)
        if bucket.try_take():
            self._warned.discard(key)
            return True
        if key not in self._warned:
            self._warned.add(key)
            wait = max(1, round(bucket.delay()))
            self.say(nick, f"Slow down, please: I'll answer you again in about {wait}s.",
                     notice=True, lane=key)
        return False

    def quit(self, message: str = "") -> None:
        self.send_now("QUIT", message or "mup stopping")


def _encode(line: str) -> bytes:
    """A formatted line as bytes, cut to 510 bytes between characters, plus CR LF."""
    data = line.encode("utf-8")
    if len(data) > MAX_LINE - 2:
        data = data[:MAX_LINE - 2].decode("utf-8", errors="ignore").encode("utf-8")
    return data + b"\r\n"


def retry_policy(max_delay: float) -> Any:
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
    return text or failure.type.__name__


@implementer(IStreamClientEndpoint)
class _DescribedEndpoint:
    """An endpoint that names itself ``host:port`` (ClientService logs it on every retry) and
    reports why a connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, where: str,
                 failed: Any) -> None:
        self._endpoint = endpoint
        self.where = where
        self._failed = failed

    def connect(self, factory: Any) -> Deferred[Any]:
        d = self._endpoint.connect(factory)

        def report(failure: Failure) -> Failure:
            self._failed(failure)
            return failure

        return d.addErrback(report)

    def __repr__(self) -> str:
        return self.where

    __str__ = __repr__


class _IRCFactory(Factory):
    def __init__(self, service: IRCService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> IRCProtocol:
        return IRCProtocol(self.service)


class IRCService(MultiService):
    """The bot's IRC presence: connects, reconnects forever, and offers delivery with
    confirmation to the rest of mup."""

    def __init__(self, config: Config, commands: Commands, reactor: Any,
                 endpoint: IStreamClientEndpoint | None = None) -> None:
        super().__init__()
        self.setName("irc")
        self.config = config
        self.commands = commands
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
        self.client = ClientService(
            endpoint, _IRCFactory(self), clock=reactor,
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
        before the server confirms (try again later); with :class:`Refused` (a ValueError) when
        the server refused the target (no such nick or channel, cannot send there)."""
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

    def stopService(self) -> Deferred[None] | None:
        if self.protocol is not None:
            self.protocol.quit()
        return super().stopService()

    # called by the protocol
    def _made(self, protocol: IRCProtocol) -> None:
        self.protocol = protocol

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

    def _ready(self, protocol: IRCProtocol) -> None:
        self.protocol = protocol
        self._early_losses = 0
        self._state = ""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _lost(self, protocol: IRCProtocol, reason: Failure) -> None:
        if self.protocol is protocol:
            self.protocol = None
        if not protocol.registered:
            self._early_losses += 1
            self._trouble(f"The IRC server {self.where} dropped the connection before "
                          f"registration: {connect_reason(reason)}")

