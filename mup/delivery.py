"""Delivery: store -> route -> IRC -> store.mark_done, at least once and in order per sender.

Entries come from the message store at start-up (what was not confirmed before a crash or
restart, read a page at a time), from the receiver (``accept(entry)``, its ``on_accepted``) and
from anyone else who appended (``wake()``, e.g. the relay puller).  An entry is marked done
only after the IRC server confirmed it (``IRCService.deliver``); until then it is retried,
waiting while IRC is down.  Messages from one sender go out in order, pipelined: up to
``PIPELINE`` of them are handed to IRC before the first is confirmed (one connection keeps them
in order, and queued deliveries share one confirming PING), each is marked done once its own
delivery is confirmed, and when the connection drops every unconfirmed one goes again, in
order, before anything newer.  Different senders go out side by side.  Delivery reports go to
``reports`` (``Outbox.report``) and its answer, if any, to IRC.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup import metrics
from mup.gateway import DeliveryReport, InboundSMS, from_record
from mup.inboundrouter import Route
from mup.ircmsg import irc_lower, split_message
from mup.phone import mask_number
from mup.store import Entry, MessageStore
from mup.text import clean_text

__all__ = ["Delivery", "DeliveryLink", "SMSRouter", "clean_text", "format_lines"]

log = Logger()

LINE_BYTES = 400
"""Longest text of one PRIVMSG line, in UTF-8 bytes: 512 minus the prefix the server adds
(``:nick!user@host PRIVMSG target :`` and CR LF), with room to spare."""

PIPELINE = 32
"""How many messages of one sender may be on their way to IRC, not yet confirmed, at once."""

REPORT_TRIES = 3
"""Delivery reports are best effort: given up after this many unconfirmed attempts."""

RECENT_DONE = 10000

PAGE = 5000
"""Entries read from the store at a time when catching up."""
"""How many delivered seqs are remembered to ignore a second hand-over of the same entry."""

_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def format_lines(route: Route, hint: str = "", limit: int = LINE_BYTES) -> list[str]:
    """The IRC lines for one routed SMS: ``[SMS] <sender> text``, split over several lines
    where long or where the SMS had line breaks; then the note and the hint."""
    prefix = f"[SMS] <{clean_text(route.sender)}> "
    room = max(limit - len(prefix.encode("utf-8")), 40)
    lines = []
    for part in _BREAKS.split(route.text):
        part = clean_text(part)
        if part:
            lines += [prefix + piece for piece in split_message(part, room)]
    if not lines:
        lines.append(prefix + "(empty message)")
    if route.note:
        lines += split_message(clean_text(route.note), limit)
    if hint:
        lines.append(clean_text(hint))
    return lines


class DeliveryLink(Protocol):
    """The IRC side of delivery (:class:`mup.irc.IRCService`)."""

    @property
    def connected(self) -> bool:
        """Registered and ready to send right now."""
        ...

    def when_connected(self) -> Deferred[None]:
        """Fires now if connected, else on the next registration."""
        ...

    def deliver(self, target: str, text: str | list[str], notice: bool = False
                ) -> Deferred[None]:
        """Fires once the server processed every line; errbacks with a ValueError when the
        server refused the target, with another error when the connection was lost."""
        ...


class SMSRouter(Protocol):
    """Where an inbound SMS goes (:class:`mup.inboundrouter.Router`)."""

    @property
    def default_channel(self) -> str:
        """Where a message goes whose target the server refused."""
        ...

    def route(self, sms: InboundSMS) -> Awaitable[Route]:
        ...


_WAITING = object()


@dataclass(eq=False)
class _Flight:
    """One stored entry of a lane on its way to IRC: what goes where, and how it went."""

    entry: Entry
    target: str = ""
    lines: list[str] = field(default_factory=list)
    """Empty: nothing to show (dropped, unreadable, a report with no answer)."""
    sms: InboundSMS | None = None
    route: Route | None = None
    hinted: tuple[str, str] | None = None
    """The conversation whose hint it carries (forgotten again if the target is refused)."""
    fell_back: bool = False
    """Sent to the default channel, the server having refused ``route``'s target."""
    best_effort: bool = False
    """A delivery report's answer: given up after ``REPORT_TRIES``, or if refused."""
    d: Deferred[None] | None = None
    """The delivery handed to IRC; None: not yet, or to be sent again."""
    outcome: Failure | None | object = _WAITING
    """None once confirmed, a Failure if not; ``_WAITING`` until settled."""
    failures: int = 0

    @property
    def confirmed(self) -> bool:
        return self.outcome is None

    @property
    def failure(self) -> Failure | None:
        return self.outcome if isinstance(self.outcome, Failure) else None

    def again(self) -> None:
        """To be handed to IRC again."""
        self.d, self.outcome = None, _WAITING


class Delivery(Service):
    """Delivers stored inbound SMS and delivery reports to IRC.

    ``store``: the :class:`mup.store.MessageStore`; ``irc``: a :class:`DeliveryLink`;
    ``router``: an :class:`SMSRouter`; ``reports(report) -> (nick, text) | None``;
    ``on_delivered(entry)`` in order per lane, once IRC confirmed the entry and ``mark_done``
    was called (the relay puller acknowledges there).
    ``pipeline``: unconfirmed messages per lane at once."""

    def __init__(self, store: MessageStore, irc: DeliveryLink, router: SMSRouter, *,
                 clock: IReactorTime,
                 reports: Callable[[DeliveryReport], tuple[str, str] | None] | None = None,
                 on_delivered: Callable[[Entry], object] | None = None,
                 hint: bool = True, prefix: str = "@", hint_window: float = 12 * 3600,
                 lanes: int = 16, max_backoff: float = 30.0, line_limit: int = LINE_BYTES,
                 pipeline: int = PIPELINE) -> None:
        self.store = store
        self.irc = irc
        self.router = router
        self.clock = clock
        self.reports = reports
        self.on_delivered = on_delivered
        self.hint = hint
        self.prefix = prefix
        self.hint_window = hint_window
        self.max_lanes = lanes
        self.max_backoff = max_backoff
        self.line_limit = line_limit
        self.pipeline = max(1, pipeline)
        self._queues: dict[str, deque[Entry]] = {}
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()
        self._known: set[int] = set()
        """Seqs queued or in flight, plus the most recently done ones (``_done_order``), so
        an entry handed over twice (``accept`` and a ``wake`` rescan) is shown once."""
        self._done_order: deque[int] = deque()
        self._scanned = 0
        """Every pending entry up to this seq was read from the store (and queued)."""
        self._scanning = False
        self._scan_again = False
        self._first_scan = True
        self._hinted: dict[tuple[str, str], float] = {}
        self._waits: set[Deferred[Any]] = set()
        self._nudges: dict[str, Deferred[None]] = {}
        """Busy lane -> what it waits on for news (``_news``)."""
        self.delivered = 0

    # Feeding

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.wake()   # what was waiting from before

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        for d in list(self._waits):
            d.cancel()

    def accept(self, entry: Entry) -> None:
        """A new stored entry (the receiver's ``on_accepted``): queued at once when it follows
        what was read already; otherwise (the backlog is still being read, after a restart)
        the read takes it in its turn, so a sender's new SMS never passes their older ones."""
        if self._scanning:
            self._scan_again = True
        elif entry.seq == self._scanned + 1:
            self._scanned = entry.seq   # no gap before it: a later scan starts after it
            self._enqueue(entry)
            self._pump()
        elif entry.seq > self._scanned:
            self.wake()

    def wake(self) -> None:
        """Someone appended to the store: read the entries not seen yet (one scan at a time)."""
        if self._scanning:
            self._scan_again = True
            return
        self._scanning = True
        d = Deferred.fromCoroutine(self._scan())
        d.addErrback(self._scan_failed)

    async def _scan(self) -> None:
        found = 0
        while self.running:
            self._scan_again = False
            entries = await self._wait(self.store.pending(after=self._scanned, limit=PAGE))
            for entry in entries:
                self._enqueue(entry)
            if entries:
                self._scanned = entries[-1].seq
                found += len(entries)
                self._pump()
            if len(entries) < PAGE and not self._scan_again:
                break
        self._scanning = False
        if self._first_scan and found:
            log.info("delivery: {n} inbound messages waiting from before", n=found)
        self._first_scan = False

    def _scan_failed(self, failure: Failure) -> None:
        self._scanning = False
        if failure.check(CancelledError) or not self.running:
            return
        log.error("delivery: cannot read the store ({why}); trying again in {delay} s",
                  why=failure.getErrorMessage(), delay=self.max_backoff)
        self.clock.callLater(self.max_backoff, self.wake)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _enqueue(self, entry: Entry) -> None:
        if entry.seq in self._known:
            return
        self._known.add(entry.seq)
        record = entry.record if isinstance(entry.record, dict) else {}
        lane = "report" if record.get("kind") == "report" else f"sms:{record.get('from', '')}"
        queue = self._queues.get(lane)
        if queue is None:
            queue = self._queues[lane] = deque()
            if lane not in self._busy:
                self._ready.append(lane)
        queue.append(entry)
        self._nudge(lane)   # a busy lane may have room for it

    def _pump(self) -> None:
        while self.running and self._ready and len(self._busy) < self.max_lanes:
            lane = self._ready.popleft()
            self._busy.add(lane)
            d = Deferred.fromCoroutine(self._run_lane(lane))
            d.addErrback(self._lane_failed, lane)

    def _lane_failed(self, failure: Failure, lane: str) -> None:
        self._busy.discard(lane)
        if failure.check(CancelledError) or not self.running:
            return
        log.failure("delivery lane {lane} failed; trying it again in {delay} s", failure,
                    lane=lane, delay=self.max_backoff)
        self.clock.callLater(self.max_backoff, self._retry_lane, lane)

    def _retry_lane(self, lane: str) -> None:
        if lane in self._queues and lane not in self._busy and lane not in self._ready:
            self._ready.append(lane)
        self._pump()

    async def _run_lane(self, lane: str) -> None:
        """Deliver ``lane``'s queue in order: route the next message and hand it to IRC while
        fewer than ``pipeline`` are unconfirmed; finish them (``_done``) strictly in order."""
        queue = self._queues[lane]
        flights: deque[_Flight] = deque()   # queue[:len(flights)]: routed, oldest first
        while self.running and queue:
            self._hand_over(lane, flights)
            if len(flights) < min(len(queue), self.pipeline) and all(
                    f.d is not None for f in flights):
                flights.append(await self._prepare(queue[len(flights)]))
                continue
            head = flights[0]
            if head.confirmed:
                flights.popleft()
                queue.popleft()
                self._done(head)
            elif head.failure is not None:
                await self._recover(flights)
            elif head.d is None:   # IRC is down
                await self._wait(self.irc.when_connected())
            else:
                await self._news(lane)
        self._busy.discard(lane)
        if queue:
            self._ready.append(lane)
        else:
            del self._queues[lane]
        self._pump()

    def _hand_over(self, lane: str, flights: deque[_Flight]) -> None:
        """Send, in order, the routed messages not sent yet.  One goes only behind messages on
        their way to the same target (so the fallback of one the server refuses still comes
        first) and never past one that failed (that one and all after it go again first)."""
        if not self.irc.connected:
            return
        ahead: set[str] = set()   # targets of earlier messages not confirmed yet
        for flight in flights:
            if flight.d is None:
                if ahead - {flight.target}:
                    return
                self._launch(lane, flight)
            if flight.failure is not None:
                return
            if not flight.confirmed:
                ahead.add(flight.target)

    def _launch(self, lane: str, flight: _Flight) -> None:
        d = flight.d = self.irc.deliver(flight.target, flight.lines)
        self._waits.add(d)   # cancelled on stopService

        def settled(result: Failure | None) -> None:
            self._waits.discard(d)
            if flight.d is d:
                flight.outcome = result
                self._nudge(lane)

        d.addBoth(settled)   # the failure is the lane's to handle (_recover)

    def _nudge(self, lane: str) -> None:
        d = self._nudges.pop(lane, None)
        if d is not None:
            d.callback(None)

    async def _news(self, lane: str) -> None:
        """Wait until a delivery of ``lane`` settles or a message joins its queue."""
        def forget(d: Deferred[None]) -> None:
            if self._nudges.get(lane) is d:
                del self._nudges[lane]

        d: Deferred[None] = Deferred(forget)
        self._nudges[lane] = d
        await self._wait(d)

    async def _recover(self, flights: deque[_Flight]) -> None:
        """The oldest unconfirmed message failed.  Refused target: fall back to the default
        channel.  Otherwise (connection lost): wait a little, then send it and every
        unconfirmed one after it again, in order."""
        head = flights[0]
        failure = head.failure
        assert failure is not None
        if failure.check(CancelledError):
            raise CancelledError()
        if failure.check(ValueError):
            assert isinstance(failure.value, ValueError)
            self._refused(head, failure.value)
            return
        head.failures += 1
        if head.best_effort and head.failures >= REPORT_TRIES:
            log.warn("giving up telling {target}: {error}", target=head.target,
                     error=failure.value)
            head.outcome = None
            return
        log.info("delivery to {target} not confirmed ({error}); retrying",
                 target=head.target, error=failure.value)
        for flight in list(flights)[1:]:   # sent on the same connection: let them settle
            if flight.d is not None and flight.outcome is _WAITING:
                await self._wait(flight.d)
                if flight.failure is not None and flight.failure.check(CancelledError):
                    raise CancelledError()
        await self._sleep(self._backoff(head.failures))
        for flight in flights:
            if flight.failure is not None:
                flight.again()

    def _refused(self, flight: _Flight, error: Exception) -> None:
        if flight.best_effort:
            log.warn("cannot tell {nick} about an SMS: {error}", nick=flight.target, error=error)
            flight.outcome = None
            return
        route = flight.route
        if route is None or flight.fell_back:
            raise error
        # IRC refused the target itself: show the message where everyone can see it.
        log.error("cannot deliver to {target} ({error}); using {default}",
                  target=route.target, error=error, default=self.router.default_channel)
        if flight.hinted is not None:
            self._hinted.pop(flight.hinted, None)
            flight.hinted = None
        route = replace(route, target=self.router.default_channel,
                        note=f"(for {route.target}, who cannot be messaged)")
        flight.route, flight.target, flight.fell_back = route, route.target, True
        flight.lines = format_lines(route, "", self.line_limit)
        flight.again()

    # Preparing: what to send where

    async def _prepare(self, entry: Entry) -> _Flight:
        """Route and format one entry (routing waits for IRC).  An entry with nothing to show
        (unreadable, dropped, a report with no answer) is confirmed at once."""
        flight = _Flight(entry)
        try:
            item = from_record(entry.record)
        except ValueError as e:
            log.error("stored entry {seq} ({key}) is unreadable, skipped: {error}",
                      seq=entry.seq, key=entry.key, error=e)
        else:
            if isinstance(item, InboundSMS):
                await self._prepare_sms(flight, item)
            else:
                self._prepare_report(flight, item)
        if not flight.lines:
            flight.d, flight.outcome = succeed(None), None
        return flight

    async def _prepare_sms(self, flight: _Flight, sms: InboundSMS) -> None:
        failures = 0
        while True:
            if not self.irc.connected:   # routing asks IRC who is present
                await self._wait(self.irc.when_connected())
            try:
                route = await self.router.route(sms)
                break
            except CancelledError:
                raise
            except Exception:
                failures += 1
                log.failure("routing an SMS from {sender} failed; retrying",
                            sender=mask_number(sms.sender))
                await self._sleep(self._backoff(failures))
        if route.dropped:
            log.info("SMS from {sender} dropped: {why}", sender=route.sender, why=route.why)
            return
        media = sms.extra.get("media", "")
        if media.isdigit() and int(media) > 0:
            more = f"(with {media} picture(s) or other media, not shown here)"
            route = replace(route, note=f"{route.note} {more}" if route.note else more)
        hint = self._hint_for(route)
        flight.lines = format_lines(route, hint, self.line_limit)
        flight.sms, flight.route, flight.target = sms, route, route.target
        if hint:   # noted now, so the messages pipelined behind this one go without it
            now = self.clock.seconds()
            if len(self._hinted) > 10000:
                self._hinted = {k: t for k, t in self._hinted.items()
                                if now - t < self.hint_window}
            flight.hinted = (irc_lower(route.sender_nick), irc_lower(route.target))
            self._hinted[flight.hinted] = now

    def _hint_for(self, route: Route) -> str:
        if not self.hint or not route.sender_nick:
            return ""
        last = self._hinted.get((irc_lower(route.sender_nick), irc_lower(route.target)))
        if last is not None and self.clock.seconds() - last < self.hint_window:
            return ""
        return f"Answer with: {self.prefix}sms {route.sender_nick} <message>"

    def _prepare_report(self, flight: _Flight, report: DeliveryReport) -> None:
        if self.reports is None:
            return
        try:
            answer = self.reports(report)
        except Exception:
            log.failure("handling a delivery report failed")
            return
        if answer is not None:
            nick, text = answer
            flight.target, flight.lines, flight.best_effort = nick, [clean_text(text)], True

    # Finishing

    def _done(self, flight: _Flight) -> None:
        """``flight`` is confirmed (or had nothing to show, or was given up): mark it done and
        call ``on_delivered``, in lane order.  The store's commit is not waited for: a crash
        before it is durable shows the message again, as for any message in flight."""
        entry, sms = flight.entry, flight.sms
        if sms is not None and flight.lines:
            self.delivered += 1
            metrics.delivered.inc()
            metrics.inbound_latency.observe(max(self.clock.seconds() - sms.received, 0.0))
        d = maybeDeferred(self.store.mark_done, [entry.seq])
        d.addErrback(lambda f: log.error(
            "marking stored entry {seq} done failed (it may be shown again after a restart): "
            "{why}", seq=entry.seq, why=f.getErrorMessage()))
        self._done_order.append(entry.seq)
        if len(self._done_order) > RECENT_DONE:
            self._known.discard(self._done_order.popleft())
        if self.on_delivered is not None:
            try:
                self.on_delivered(entry)
            except Exception:
                log.failure("on_delivered failed for {key}", key=entry.key)

    def _backoff(self, failures: int) -> float:
        return min(0.5 * 2.0 ** (failures - 1), self.max_backoff)

    async def _sleep(self, seconds: float) -> None:
        await self._wait(deferLater(self.clock, seconds, lambda: None))

    async def _wait(self, d: Deferred[Any]) -> Any:
        self._waits.add(d)
        try:
            return await d
        finally:
            self._waits.discard(d)
