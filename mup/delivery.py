"""Delivery: journal -> route -> IRC -> journal.mark_done, at least once and in order per sender.

Entries come from the journal at start-up (what was not confirmed before a crash or restart),
from the receiver (``accept(entry)``, its ``on_accepted``) and from anyone else who appended
(``wake()``, e.g. the relay puller).  An entry is marked done only after the IRC server
confirmed it (``IRCService.deliver``); until then it is retried, waiting while IRC is down.
Messages from one sender go out one at a time, in order; different senders go out side by side.
Delivery reports go to ``reports`` (``Outbox.report``) and its answer, if any, to IRC.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from dataclasses import replace
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mup import metrics
from mup.gateway import DeliveryReport, InboundSMS
from mup.gateways.inbound import from_record
from mup.ircmsg import irc_lower, sanitize, split_message
from mup.phone import mask_number
from mup.routing import Route

__all__ = ["Delivery", "clean_text", "format_lines"]

log = Logger()

LINE_BYTES = 400
"""Longest text of one PRIVMSG line, in UTF-8 bytes: 512 minus the prefix the server adds
(``:nick!user@host PRIVMSG target :`` and CR LF), with room to spare."""

RECENT_DONE = 10000
"""How many delivered seqs are remembered to ignore a second hand-over of the same entry."""

_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def clean_text(text: str) -> str:
    """One line of untrusted text made safe for IRC: stricter than ``ircmsg.sanitize``, as an
    SMS has no business with IRC colour/bold codes or bidi overrides either: line breaks become
    spaces, control and format characters go, runs of spaces shrink."""
    text = sanitize(text)
    out = []
    for c in text:
        cat = unicodedata.category(c)
        if c in "\u2028\u2029\x85":
            out.append(" ")
        elif cat in ("Cc", "Cs") or (cat == "Cf" and c not in "\u200d\u200c"):
            continue
        else:
            out.append(c)
    return re.sub(r" {2,}", " ", "".join(out)).strip()


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


class Delivery(Service):
    """Delivers journaled inbound SMS and delivery reports to IRC.

    ``journal``: ``pending()``, ``mark_done(seq)``; ``irc``: ``connected``,
    ``when_connected()``, ``deliver(target, lines)``; ``router``: ``route(sms)`` (async);
    ``reports(report) -> (nick, text) | None``; ``on_delivered(entry)`` after ``mark_done``
    (the relay puller acknowledges there)."""

    def __init__(self, journal: Any, irc: Any, router: Any, *, clock: Any,
                 reports: Callable[[DeliveryReport], tuple[str, str] | None] | None = None,
                 on_delivered: Callable[[Any], object] | None = None,
                 hint: bool = True, prefix: str = "@", hint_window: float = 12 * 3600,
                 lanes: int = 16, max_backoff: float = 30.0, line_limit: int = LINE_BYTES
                 ) -> None:
        self.journal = journal
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
        self._queues: dict[str, deque[Any]] = {}
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()
        self._known: set[int] = set()
        """Seqs queued or in flight, plus the most recently done ones (``_done_order``), so
        an entry handed over twice (``accept`` and a ``wake`` rescan) is shown once."""
        self._done_order: deque[int] = deque()
        self._floor = 0
        """Seqs up to this were queued at start-up (without going through ``_known``)."""
        self._hinted: dict[tuple[str, str], float] = {}
        self._waits: set[Deferred[Any]] = set()
        self._rescan: Any = None
        self.delivered = 0

    # Feeding

    def startService(self) -> None:
        super().startService()
        pending = self.journal.pending()
        queues, ready = self._queues, self._ready
        for entry in pending:   # _enqueue, inlined: start-up with a large backlog counts
            record = entry.record
            lane = ("report" if record.get("kind") == "report"
                    else "sms:" + str(record.get("from", "")))
            queue = queues.get(lane)
            if queue is None:
                queue = queues[lane] = deque()
                ready.append(lane)
            queue.append(entry)
        # Everything up to here is queued: later hand-overs of these seqs are ignored.
        self._floor = max((e.seq for e in pending), default=self._floor)
        if pending:
            log.info("delivery: {n} inbound messages waiting from before", n=len(pending))
        self._pump()

    def stopService(self) -> None:
        super().stopService()
        if self._rescan is not None and self._rescan.active():
            self._rescan.cancel()
        for d in list(self._waits):
            d.cancel()

    def accept(self, entry: Any) -> None:
        """A new journal entry (the receiver's ``on_accepted``)."""
        self._enqueue(entry)
        self._pump()

    def wake(self) -> None:
        """Someone appended to the journal: look for entries not seen yet (coalesced)."""
        if self._rescan is None or not self._rescan.active():
            self._rescan = self.clock.callLater(0, self._scan)

    def _scan(self) -> None:
        for entry in self.journal.pending():
            self._enqueue(entry)
        self._pump()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _enqueue(self, entry: Any) -> None:
        if entry.seq <= self._floor or entry.seq in self._known:
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

    def _pump(self) -> None:
        while self.running and self._ready and len(self._busy) < self.max_lanes:
            lane = self._ready.popleft()
            self._busy.add(lane)
            d = Deferred.fromCoroutine(self._run_lane(lane))
            d.addErrback(self._lane_failed, lane)

    def _lane_failed(self, failure: Any, lane: str) -> None:
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
        queue = self._queues[lane]
        while queue and self.running:
            entry = queue[0]
            await self._deliver_entry(entry)
            queue.popleft()
            await self._done(entry)
        self._busy.discard(lane)
        if queue:
            self._ready.append(lane)
        else:
            del self._queues[lane]
        self._pump()

    # Delivering

    async def _deliver_entry(self, entry: Any) -> None:
        try:
            item = from_record(entry.record)
        except ValueError as e:
            log.error("journal entry {seq} ({key}) is unreadable, skipped: {error}",
                      seq=entry.seq, key=entry.key, error=e)
            return
        if isinstance(item, InboundSMS):
            await self._deliver_sms(item)
        else:
            await self._deliver_report(item)

    async def _deliver_sms(self, sms: InboundSMS) -> None:
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
        lines = format_lines(route, hint, self.line_limit)
        try:
            await self._send(route.target, lines, forever=True)
        except ValueError as e:
            # IRC refused the target itself: show the message where everyone can see it.
            log.error("cannot deliver to {target} ({error}); using {default}",
                      target=route.target, error=e, default=self.router.default_channel)
            route = replace(route, target=self.router.default_channel,
                            note=f"(for {route.target}, who cannot be messaged)")
            hint = ""
            await self._send(route.target, format_lines(route, "", self.line_limit), True)
        if hint:
            now = self.clock.seconds()
            if len(self._hinted) > 10000:
                self._hinted = {k: t for k, t in self._hinted.items()
                                if now - t < self.hint_window}
            self._hinted[(irc_lower(route.sender_nick), irc_lower(route.target))] = now
        self.delivered += 1
        metrics.delivered.inc()
        metrics.inbound_latency.observe(max(self.clock.seconds() - sms.received, 0.0))

    def _hint_for(self, route: Route) -> str:
        if not self.hint or not route.sender_nick:
            return ""
        last = self._hinted.get((irc_lower(route.sender_nick), irc_lower(route.target)))
        if last is not None and self.clock.seconds() - last < self.hint_window:
            return ""
        return f"Answer with: {self.prefix}sms {route.sender_nick} <message>"

    async def _deliver_report(self, report: DeliveryReport) -> None:
        if self.reports is None:
            return
        try:
            answer = self.reports(report)
        except Exception:
            log.failure("handling a delivery report failed")
            return
        if answer is not None:
            nick, text = answer
            try:
                await self._send(nick, [clean_text(text)], forever=False)
            except ValueError as e:
                log.warn("cannot tell {nick} about an SMS: {error}", nick=nick, error=e)

    async def _send(self, target: str, lines: list[str], forever: bool) -> None:
        """Deliver until the server confirmed; reports (``forever=False``) give up after a
        few tries, being best effort."""
        failures = 0
        while True:
            if not self.irc.connected:
                await self._wait(self.irc.when_connected())
            try:
                await self._wait(self.irc.deliver(target, lines))
                return
            except (CancelledError, ValueError):
                raise
            except Exception as e:
                failures += 1
                if not forever and failures >= 3:
                    log.warn("giving up telling {target}: {error}", target=target, error=e)
                    return
                log.info("delivery to {target} not confirmed ({error}); retrying",
                         target=target, error=e)
                await self._sleep(self._backoff(failures))

    async def _done(self, entry: Any) -> None:
        try:
            await self.journal.mark_done(entry.seq)
        except Exception:
            log.failure("marking journal entry {seq} done failed (it may be shown again after "
                        "a restart)", seq=entry.seq)
        self._done_order.append(entry.seq)
        if len(self._done_order) > RECENT_DONE:
            self._known.discard(self._done_order.popleft())
        if self.on_delivered is not None:
            try:
                self.on_delivered(entry)
            except Exception:
                log.failure("on_delivered failed for {key}", key=entry.key)

    def _backoff(self, failures: int) -> float:
        return min(0.5 * 2 ** (failures - 1), self.max_backoff)

    async def _sleep(self, seconds: float) -> None:
        await self._wait(deferLater(self.clock, seconds, lambda: None))

    async def _wait(self, d: Deferred[Any]) -> Any:
        self._waits.add(d)
        try:
            return await d
        finally:
            self._waits.discard(d)
