"""An HTTP Site that a slow or hostile client cannot hold open: the receiver's (bot and relay).

twisted.web's own idle timeout restarts on every byte, so a client sending its headers a byte
at a time, or a body that never comes, keeps a connection (and a file descriptor) for ever.
:class:`GuardedSite` adds, per connection:

* a deadline for the request line and headers (``header_timeout``, from the connection or from
  the first byte of the next request on a kept-alive one) and one for the body
  (``body_timeout``, from the end of the headers); past either the client gets ``408`` and the
  connection is closed;
* the idle timeout between requests (``idle_timeout``, twisted.web's own ``timeout``);
* ``414`` for a request line longer than ``max_request_line``, instead of a dropped connection;
* a cap on open connections (``max_connections``).  Connections that are still sending (or
  waiting to send) a request may hold all but ``reserved_connections`` of them: when one more
  arrives, the oldest of those is closed (``503``), so a flood of slow clients never keeps a
  real post, which sends its request at once, from being answered.  A new connection is
  refused only when every connection is busy with a request, or when all the unfinished ones
  arrived in the same instant and none has been read yet.

Built from twisted.web's public API (``Site(timeout=...)``, a request factory, and
``twisted.protocols.policies.ProtocolWrapper`` around each channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from mup.config import Section

__all__ = ["GuardedSite", "Limits"]

log = Logger()

TWISTED_LINE_LIMIT = 16384
"""twisted.web drops a connection whose header line exceeds this: ``max_request_line`` must
not be larger, so that the client gets a 414 rather than a dropped connection."""

_SAY_BUSY_EVERY = 60.0
"""A full receiver is logged at most this often (a flood must not flood the log too)."""

_GRACE = 1.0
"""A connection that sent nothing yet is not closed for a newer one before this many seconds:
accepting a burst comes before reading any of it, and a real post in the burst must not be
closed before it was even read."""

_ABORT_AFTER = 5.0
"""After a timeout answer, how long a client that does not read it keeps the connection."""


@dataclass(frozen=True)
class Limits:
    """How long a client may take, and how many may be connected at once."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 512
    reserved_connections: int = 16
    max_request_line: int = TWISTED_LINE_LIMIT

    @classmethod
    def from_config(cls, section: Section) -> Limits:
        """From the ``[webhook]`` section (durations are strings such as ``"10s"``)."""
        from mup.config import parse_duration

        return cls(header_timeout=parse_duration(section.header_timeout),
                   body_timeout=parse_duration(section.body_timeout),
                   idle_timeout=parse_duration(section.idle_timeout),
                   max_connections=section.max_connections,
                   reserved_connections=section.reserved_connections,
                   max_request_line=section.max_request_line)


# A connection's phases.
_WAITING = "waiting"    # connected or kept alive, no request byte yet
_HEADERS = "headers"    # request line and headers arriving
_BODY = "body"          # headers done, body arriving
_BUSY = "busy"          # the whole request is in; the resource is answering it
_CLOSING = "closing"    # answered (408, 414, 503) and closing: counted nowhere


class GuardedSite(Site):
    """A :class:`~twisted.web.server.Site` with the limits of :class:`Limits` (see the module).

    ``requestFactory`` may be any Request subclass; it is extended to report its progress."""

    def __init__(self, resource: IResource, *, limits: Limits | None = None,
                 requestFactory: type[Request] = Request, **kwargs: Any) -> None:
        self.limits = limits or Limits()
        super().__init__(resource, requestFactory=_reporting(requestFactory),  # type: ignore[no-untyped-call]
                         timeout=self.limits.idle_timeout or None, **kwargs)
        self.connections: dict[GuardedConnection, None] = {}
        """Open connections, oldest first."""
        self._said_busy = float("-inf")

    # Returns the channel wrapped (as twisted.protocols.policies does), not a bare channel.
    def buildProtocol(  # type: ignore[override]
            self, addr: IAddress | None) -> GuardedConnection | None:
        limits = self.limits
        open_ = [c for c in self.connections if c.phase != _CLOSING]
        waiting = [c for c in open_ if c.phase != _BUSY]
        room = max(limits.max_connections - limits.reserved_connections, 1)
        if len(waiting) >= room:
            now = self.reactor.seconds()
            victim = next((c for c in waiting if c.had_its_chance(now)), None)
            if victim is None:      # all just arrived: this one waits for a turn, not them
                return None
            victim.evict()
            open_.remove(victim)
        if len(open_) >= limits.max_connections:
            now = self.reactor.seconds()
            if now - self._said_busy >= _SAY_BUSY_EVERY:
                self._said_busy = now
                log.warn("receiver: {n} connections are all busy with requests; refusing new "
                         "ones ([webhook] max_connections)", n=len(open_))
            return None
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if channel is None:
            return None
        return GuardedConnection(self, channel)

    # ProtocolWrapper reports its connections to its factory.

    def registerProtocol(self, connection: GuardedConnection) -> None:
        self.connections[connection] = None

    def unregisterProtocol(self, connection: GuardedConnection) -> None:
        self.connections.pop(connection, None)


class GuardedConnection(ProtocolWrapper):
    """One client connection: times its request line, headers and body; checks the line."""

    factory: GuardedSite
    transport: ITCPTransport   # the listening port's TCP (or TLS over TCP) connection
    phase = _WAITING

    def __init__(self, factory: GuardedSite, channel: IProtocol) -> None:
        # GuardedSite is no WrappingFactory, but has what ProtocolWrapper calls on one.
        super().__init__(factory, channel)  # type: ignore[arg-type]
        self._timer: IDelayedCall | None = None
        self._line = 0
        """Bytes of the request line seen so far (while in ``_HEADERS``, until its newline)."""
        self._line_done = False
        self._closing = False
        self._abort: IDelayedCall | None = None
        self._heard = False
        """Whether anything was read from the client yet."""
        self._born = factory.reactor.seconds()

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]
        self._start(_HEADERS, self.factory.limits.header_timeout, "its request headers")

    def had_its_chance(self, now: float) -> bool:
        """Whether this connection may be closed for a newer one: it was read from (and is
        still unfinished, or idle), or it has been silent for a second.  One just accepted,
        whose request has not been read yet, is never closed for another just accepted."""
        return self._heard or now - self._born >= _GRACE

    def dataReceived(self, data: bytes) -> None:
        self._heard = True
        if self._closing:
            return
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            self._stop()     # HTTP/2 (when installed) has its own framing: not timed here
            self.phase = _BUSY
            super().dataReceived(data)  # type: ignore[no-untyped-call]
            return
        if self.phase == _WAITING:
            self._start(_HEADERS, self.factory.limits.header_timeout, "its request headers")
        if self.phase == _HEADERS and not self._line_done and not self._request_line(data):
            return
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _request_line(self, data: bytes) -> bool:
        """Count the request line's bytes (empty lines before it do not count); False when it
        is over the limit and the client has been answered 414."""
        limit = self.factory.limits.max_request_line
        rest = data
        while rest and self._line <= limit:
            end = rest.find(b"\n")
            if end < 0:
                self._line += len(rest)
                break
            self._line += end
            if self._line > 1:          # more than a stray "\r": the request line is complete
                if self._line > limit:
                    break
                self._line_done = True
                return True
            self._line = 0
            rest = rest[end + 1:]
        if self._line > limit:
            self._answer(414, "URI Too Long",
                         f"the request line is over {limit} bytes ([webhook] max_request_line)")
            return False
        return True

    # Called by the request (see _reporting).

    def headers_done(self, length: int | None) -> None:
        if self._closing:
            return
        if length == 0:     # no body: the request is complete now (no timer to set and cancel)
            self._stop()
            self.phase = _BODY
        else:
            self._start(_BODY, self.factory.limits.body_timeout, "its request body")

    def request_received(self) -> None:
        self._stop()
        if not self._closing:
            self.phase = _BUSY

    def request_finished(self) -> None:
        self._stop()
        if not self._closing:
            self.phase = _WAITING
            self._line = 0
            self._line_done = False

    # Timers.

    def _start(self, phase: str, seconds: float, what: str) -> None:
        self._stop()
        self.phase = phase
        if seconds > 0:
            self._timer = self.factory.reactor.callLater(seconds, self._expired, what, seconds)

    def _stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self, what: str, seconds: float) -> None:
        self._timer = None
        log.debug("receiver: closing a connection from {peer} that did not send {what} in "
                 "{seconds:g} s", peer=_peer(self), what=what, seconds=seconds)
        self._answer(408, "Request Timeout", f"no {what.split()[-1]} in {seconds:g} s")

    def evict(self) -> None:
        """Closed to make room for a new connection (see the module)."""
        log.debug("receiver: closing the oldest idle or unfinished connection ({peer}) to make "
                 "room for a new one ([webhook] max_connections)", peer=_peer(self))
        self._answer(503, "Service Unavailable", "too many connections; try again")

    def _answer(self, code: int, reason: str, text: str) -> None:
        """Answer ``code`` (nothing more is read) and close; abort if the client will not
        read it."""
        if self._closing:
            return
        self._closing = True
        self._stop()
        self.phase = _CLOSING
        body = (text + "\n").encode("utf-8")
        self.transport.write(b"HTTP/1.1 %d %s\r\nConnection: close\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (code, reason.encode(), len(body),
                                                                 body))
        self.transport.loseConnection()
        self._abort = self.factory.reactor.callLater(_ABORT_AFTER, self._abort_now)

    def _abort_now(self) -> None:
        self._abort = None
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


def _peer(connection: ProtocolWrapper) -> str:
    try:
        peer = connection.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:  # a transport without an address
        return "a client"


def _reporting(base: type[Request]) -> type[Request]:
    """``base`` extended to tell its :class:`GuardedConnection` how far the request got."""

    def guard(request: Request) -> GuardedConnection | None:
        transport = getattr(getattr(request, "channel", None), "transport", None)
        return transport if isinstance(transport, GuardedConnection) else None

    class Reporting(base):  # type: ignore[valid-type,misc]
        def gotLength(self, length: int | None) -> None:
            connection = guard(self)
            if connection is not None:
                connection.headers_done(length)
            super().gotLength(length)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            connection = guard(self)
            if connection is not None:
                connection.request_received()
            super().requestReceived(command, path, version)

        def finish(self) -> Any:
            connection = guard(self)     # finishing lets go of the channel
            result = super().finish()
            if connection is not None:
                connection.request_finished()
            return result

    Reporting.__name__ = Reporting.__qualname__ = f"Reporting{base.__name__}"
    return Reporting

