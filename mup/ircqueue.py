"""The IRC output queue: flood control shared fairly between lanes, and confirmation by PING.

Lines wait in lanes: one per person for the answers to their commands, one for inbound SMS
deliveries, one for the bot's own business (JOIN, WHOIS, ...).  The pump sends one line of each
waiting lane in turn, as the token bucket allows, so someone flooding the bot delays the others
by at most one line a turn.

A delivery is confirmed by a PING after its last line: the server handles a client's lines in
order, so the PONG says every line before it was processed.  Deliveries sent close together
share one PING (it costs a line of flood control), but a PING is sent at most
:data:`CONFIRM_LINES` lines or :data:`CONFIRM_SECONDS` seconds after the first line it confirms,
so what was shown on IRC is marked done within seconds, and after a crash at most those few
seconds of messages are shown a second time.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mup.ratelimit import TokenBucket

__all__ = ["CONFIRM_LINES", "CONFIRM_SECONDS", "DELIVERY_LANE", "NotDelivered", "OutputQueue",
           "TargetRefused"]

CONFIRM_LINES = 4
"""Lines sent after a delivery's last line before its confirming PING must go."""
CONFIRM_SECONDS = 3.0
"""Seconds after a delivery's last line was sent before its confirming PING must go."""
DELIVERY_LANE = "\0deliveries"
"""The lane of inbound SMS deliveries (no nick can contain a NUL)."""
OWN_LANE = ""
"""The lane of the bot's own lines (JOIN, WHOIS, NICK, ...)."""


class NotDelivered(Exception):
    """The connection was lost (or was not up) before the server confirmed the lines."""


class TargetRefused(ValueError):
    """The server refused the target: no such nick or channel, or it cannot be sent to
    (moderated, banned, not joined).  Sending again will not help; pick another target."""


@dataclass(eq=False)
class _Waiter:
    """One delivery waiting for the PONG after its last line."""

    d: Deferred[None]
    target: str
    """The target, folded (``irc_lower``), to match refusals (ERR_NOSUCHNICK, ...)."""
    refusals: list[str] = field(default_factory=list)
    cancelled: bool = False


class OutputQueue:
    """Lines waiting behind a token bucket, sent round-robin between lanes; PINGs confirming
    deliveries.  ``write`` puts one line (bytes, CR LF included) on the wire."""

    def __init__(self, write: Callable[[bytes], None], bucket: TokenBucket,
                 clock: IReactorTime) -> None:
        self._write = write
        self._bucket = bucket
        self._clock = clock
        self._lanes: dict[str, deque[tuple[bytes, _Waiter | None]]] = {}
        """Waiting lines by lane; the dict's order is the turn order (next lane first)."""
        self._queued = 0
        """Deliveries whose last line is still waiting in a lane."""
        self._unpinged: list[_Waiter] = []
        """Deliveries sent, waiting for a PING to be sent after them."""
        self._unpinged_at = 0.0
        self._lines_since = 0
        """Lines sent since the oldest of ``_unpinged``."""
        self._pings: dict[str, list[_Waiter]] = {}
        """PING token -> the deliveries its PONG confirms."""
        self._tokens = itertools.count(1)
        self._call: IDelayedCall | None = None
        self._closed = False

    def __len__(self) -> int:
        """Lines waiting to be sent."""
        return sum(len(lane) for lane in self._lanes.values())

    def send(self, line: bytes, lane: str = OWN_LANE) -> None:
        """Queue one line in ``lane``."""
        self._put(lane, [line], None)

    def send_lines(self, lines: Iterable[bytes], lane: str = OWN_LANE) -> None:
        self._put(lane, list(lines), None)

    def deliver(self, lines: list[bytes], target: str, lane: str = DELIVERY_LANE
                ) -> Deferred[None]:
        """Queue ``lines`` to folded ``target``; fire once the server processed them (a PONG),
        errback :class:`TargetRefused` if it refused ``target`` meanwhile, :class:`NotDelivered` if
        the queue is closed first."""
        waiter = _Waiter(Deferred(lambda d: self._cancel(waiter)), target)
        if self._closed:
            waiter.d.errback(NotDelivered("not connected to IRC"))
        elif lines:
            self._queued += 1
            self._put(lane, lines, waiter)
        else:
            self._sent(waiter)
            self._kick()
        return waiter.d

    def pong(self, token: str) -> None:
        """A PONG came back: fire the deliveries its PING confirms."""
        for waiter in self._pings.pop(token, ()):
            if waiter.cancelled:
                continue
            if waiter.refusals:
                waiter.d.errback(TargetRefused(waiter.refusals[0]))
            else:
                waiter.d.callback(None)

    def refused(self, target: str, reason: str) -> None:
        """The server refused folded ``target``: deliveries to it sent and not yet confirmed
        will errback :class:`TargetRefused`."""
        for waiters in (self._unpinged, *self._pings.values()):
            for waiter in waiters:
                if waiter.target == target:
                    waiter.refusals.append(reason)

    def close(self, reason: str) -> None:
        """The connection is gone: drop waiting lines; every delivery not confirmed errbacks
        :class:`NotDelivered`."""
        self._closed = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        waiters = [w for lane in self._lanes.values() for _line, w in lane if w is not None]
        waiters += self._unpinged
        for pinged in self._pings.values():
            waiters += pinged
        self._lanes.clear()
        self._unpinged = []
        self._pings = {}
        self._queued = 0
        for waiter in waiters:
            if not waiter.cancelled:
                waiter.d.errback(NotDelivered(f"connection lost: {reason}"))

    # -- internals -------------------------------------------------------------------------

    def _put(self, lane: str, lines: list[bytes], waiter: _Waiter | None) -> None:
        if self._closed or not lines:
            return
        queue = self._lanes.setdefault(lane, deque())
        queue.extend((line, None) for line in lines[:-1])
        queue.append((lines[-1], waiter))
        self._kick()

    def _kick(self) -> None:
        if self._call is None:  # else the scheduled pump sends it in turn
            self._pump()

    def _pump(self) -> None:
        self._call = None
        while (self._lanes or self._unpinged) and not self._closed:
            if not self._bucket.try_take():
                self._call = self._clock.callLater(self._bucket.delay(), self._pump)
                return
            if self._unpinged and self._ping_due():
                self._ping()
            else:
                self._send_next()

    def _ping_due(self) -> bool:
        """Send the PING now, or let it wait for deliveries still queued to share it."""
        return (not self._queued or self._lines_since >= CONFIRM_LINES
                or self._clock.seconds() - self._unpinged_at >= CONFIRM_SECONDS)

    def _ping(self) -> None:
        token = f"mup-{next(self._tokens)}"
        self._pings[token] = self._unpinged
        self._unpinged = []
        self._write(b"PING " + token.encode() + b"\r\n")

    def _send_next(self) -> None:
        lane = next(iter(self._lanes))
        queue = self._lanes.pop(lane)
        line, waiter = queue.popleft()
        if queue:
            self._lanes[lane] = queue  # to the back of the turn order
        self._write(line)
        self._lines_since += 1
        if waiter is not None:
            self._queued -= 1
            self._sent(waiter)

    def _sent(self, waiter: _Waiter) -> None:
        if waiter.cancelled:
            return
        if not self._unpinged:
            self._unpinged_at = self._clock.seconds()
            self._lines_since = 0
        self._unpinged.append(waiter)

    def _cancel(self, waiter: _Waiter) -> None:
        """A cancelled delivery: its lines still go, but nobody waits for its PONG."""
        waiter.cancelled = True
        if waiter in self._unpinged:
            self._unpinged.remove(waiter)
        for waiters in self._pings.values():
            if waiter in waiters:
                waiters.remove(waiter)
