"""One IRC connection: registration (CAP, SASL, nick), keepalive, channels, and what people say.

Written on :class:`~twisted.internet.protocol.Protocol` rather than Twisted's ``IRCClient`` so
that odd bytes never crash it (every line is decoded with a fallback) and IRCv3 tags are parsed.
The protocol gets its settings and a :class:`ConnectionListener`; it keeps what it learns in a
:class:`~mup.ircstate.ChannelState`, sends through an :class:`~mup.ircqueue.OutputQueue`, and
reports each message from a person to the listener as a :class:`~mup.ircevents.ChatMessage`.
"""

from __future__ import annotations

import base64
import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from mup.config import Section

from mup.ircevents import ChatLink, ChatMessage
from mup.ircmsg import Message, decode, format_line, irc_lower, parse, split_message
from mup.ircqueue import DELIVERY_LANE, OutputQueue
from mup.ircstate import ChannelState
from mup.ratelimit import TokenBucket

__all__ = ["ConnectionListener", "IRCProtocol", "IRCSettings"]

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


@dataclass(frozen=True)
class IRCSettings:
    """What one connection needs to know (the ``[irc]`` keys it uses)."""

    nick: str = "mup"
    alternate_nicks: tuple[str, ...] = ()
    username: str = "mup"
    realname: str = "mup"
    password: str = ""
    channels: tuple[str, ...] = ()
    channel_keys: tuple[tuple[str, str], ...] = ()
    """Keys of the channels that need one: ``(channel, key)`` pairs."""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    nickserv_password: str = ""
    line_burst: int = 5
    line_rate: float = 1.0
    ping_interval: float = 60.0
    ping_timeout: float = 60.0
    rejoin_delay: float = 10.0

    @classmethod
    def from_section(cls, irc: Section) -> IRCSettings:
        """From the config's ``[irc]`` section."""
        return cls(nick=irc.nick, alternate_nicks=tuple(irc.alternate_nicks),
                   username=irc.username, realname=irc.realname, password=irc.password,
                   channels=tuple(irc.channels), sasl_mechanism=irc.sasl_mechanism,
                   sasl_username=irc.sasl_username, sasl_password=irc.sasl_password,
                   nickserv_password=irc.nickserv_password, line_burst=irc.line_burst,
                   line_rate=irc.line_rate, ping_interval=irc.ping_interval,
                   ping_timeout=irc.ping_timeout, rejoin_delay=irc.rejoin_delay)


class ConnectionListener(TypingProtocol):
    """Hears how a connection is doing, and what people say on it."""

    def connection_made(self, protocol: IRCProtocol) -> None:
        """Connected (not registered yet)."""

    def connection_ready(self, protocol: IRCProtocol) -> None:
        """Registered, and the configured channels joined (or given up on)."""

    def connection_lost(self, protocol: IRCProtocol, reason: Failure) -> None:
        """Gone; ``protocol.registered`` says whether it got that far."""

    def message_received(self, message: ChatMessage, link: ChatLink) -> None:
        """A person said something to the bot or in one of its channels."""


class IRCProtocol(Protocol):
    """One IRC connection: registration (CAP, SASL), nicks, keepalive, channels, accounts; what
    people say goes to ``listener``, what to send comes back through :meth:`say` and
    :meth:`deliver` (the :class:`~mup.ircevents.ChatLink` a listener gets)."""

    transport: ITCPTransport   # TCP, or TLS over TCP: either can be aborted

    def __init__(self, settings: IRCSettings, listener: ConnectionListener,
                 clock: IReactorTime) -> None:
        self.settings = settings
        self.listener = listener
        self.clock = clock
        s = settings
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
        self.state = ChannelState()
        self._buffer = b""
        self.queue = OutputQueue(self._write, TokenBucket(s.line_burst, s.line_rate, clock),
                                 clock)
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

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.listener.connection_made(self)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # pragma: no cover - not a TCP socket after all
                pass
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
        self.listener.connection_lost(self, reason)

    def _later(self, name: str, delay: float, f: Callable[..., object], *args: Any) -> None:
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
            self.state.set_account(msg.nick, msg.tags.get("account", "*"))

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
        :meth:`mup.irc.IRCService.deliver`."""
        return self.queue.deliver(self._lines(target, text, notice, ""), irc_lower(target),
                                  DELIVERY_LANE)

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
            self.join(channel)
        if self._pending_joins:
            self._later("ready", JOIN_WAIT, self._mark_ready)
        else:
            self._mark_ready()

    def _mark_ready(self) -> None:
        self._cancel("ready")
        if not self.ready and not self._lost:
            self.ready = True
            self.listener.connection_ready(self)

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
        self.state.renamed(old, new)

    # -- channels --------------------------------------------------------------------------

    def _is_me(self, nick: str) -> bool:
        return irc_lower(nick) == irc_lower(self.nick)

    def irc_JOIN(self, msg: Message) -> None:
        channel = msg.param(0)
        if "extended-join" in self.enabled_caps and len(msg.params) >= 2:
            self.state.set_account(msg.nick, msg.param(1))
        own = self._is_me(msg.nick)
        self.state.joined(channel, msg.nick, own)
        if own:
            self.hostmask = msg.prefix if "!" in msg.prefix else self.hostmask
            log.info("Joined {channel}", channel=channel)
            self._join_settled(channel)

    def irc_353(self, msg: Message) -> None:  # RPL_NAMREPLY
        self.state.names(msg.param(-2), msg.params[-1].split() if msg.params else [])

    def _part(self, channel: str, nick: str) -> None:
        self.state.parted(channel, nick, self._is_me(nick))

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
                        self.join, channel)

    def irc_QUIT(self, msg: Message) -> None:
        self.state.quit(msg.nick)
        if irc_lower(msg.nick) == irc_lower(self.settings.nick) and self.registered:
            self._regain()

    def irc_INVITE(self, msg: Message) -> None:
        channel = msg.param(1)
        if self._configured(channel):
            log.info("Invited to {channel} by {nick}; joining", channel=channel, nick=msg.nick)
            self.join(channel)
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
        self._later(f"join {irc_lower(channel)}", JOIN_RETRY, self.join, channel)

    irc_405 = irc_471 = irc_473 = irc_474 = irc_475 = irc_476 = irc_477 = \
        irc_489 = _join_failed

    def irc_437(self, msg: Message) -> None:  # nick or channel temporarily unavailable
        if msg.param(1)[:1] in "#&+!":
            self._join_failed(msg)
        else:
            self._nick_unavailable(msg)

    def join(self, channel: str) -> None:
        """JOIN ``channel``, with its key if the settings have one."""
        folded = irc_lower(channel)
        key = next((k for c, k in self.settings.channel_keys if irc_lower(c) == folded), "")
        if key:
            self.send("JOIN", channel, key)
        else:
            self.send("JOIN", channel)

    def _configured(self, channel: str) -> bool:
        return irc_lower(channel) in {irc_lower(c) for c in self.settings.channels}

    def irc_396(self, msg: Message) -> None:  # RPL_HOSTHIDDEN: our displayed host changed
        if self.hostmask is not None:
            self.hostmask = self.hostmask.rsplit("@", 1)[0] + "@" + msg.param(1)

    def irc_CHGHOST(self, msg: Message) -> None:
        if irc_lower(msg.nick) == irc_lower(self.nick):
            self.hostmask = f"{self.nick}!{msg.param(0)}@{msg.param(1)}"

    def is_present(self, nick: str) -> bool:
        """``nick`` shares a channel with the bot."""
        return self.state.is_present(nick)

    # -- accounts --------------------------------------------------------------------------

    def irc_ACCOUNT(self, msg: Message) -> None:
        self.state.set_account(msg.nick, msg.param(0))

    def _current_account(self, nick: str) -> tuple[bool, str | None]:
        """``(known, account)`` without asking the server: from the map while the server
        keeps it current (account-notify and a shared channel)."""
        if "account-notify" in self.enabled_caps and self.state.is_present(nick):
            return self.state.known_account(nick)
        return False, None

    def account_of(self, nick: str) -> Deferred[str | None]:
        """The services account of ``nick``: from the map when the server keeps it current,
        else by WHOIS."""
        known, account = self._current_account(nick)
        if known:
            return succeed(account)
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
            self.state.remember_account(key, self._whois[key][1][0])
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

    # -- what people say ------------------------------------------------------------------

    def irc_PRIVMSG(self, msg: Message) -> None:
        """A person's message, to the bot or in a channel: reported to the listener with the
        sender's account as far as it is known now."""
        target, text = msg.param(0), msg.param(1)
        if not msg.prefix or "!" not in msg.prefix or text.startswith("\x01"):
            return  # server notices and CTCP are not for the listener
        nick = msg.nick
        if self._is_me(nick):
            return
        if "account-tag" in self.enabled_caps:  # the tag on this very message: current
            known, account = True, msg.tags.get("account") or None
        else:
            known, account = self._current_account(nick)
        self.listener.message_received(ChatMessage(
            nick=nick, mask=msg.prefix, text=text,
            channel=None if self._is_me(target) else target, own_nick=self.nick,
            account=account, account_known=known), self)

    def quit(self, message: str = "") -> None:
        self.send_now("QUIT", message or "mup stopping")


def _encode(line: str) -> bytes:
    """A formatted line as bytes, cut to 510 bytes between characters, plus CR LF."""
    data = line.encode("utf-8")
    if len(data) > MAX_LINE - 2:
        data = data[:MAX_LINE - 2].decode("utf-8", errors="ignore").encode("utf-8")
    return data + b"\r\n"
