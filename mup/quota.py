"""How much SMS each sender, and everyone together, may send: counted in segments, kept on disk.

Three limits, all configurable in ``[sms]``: a per-sender token bucket (``sender_burst`` segments
at once, refilled at ``sender_rate`` per hour), a per-sender daily quota (``sender_daily``) and a
global daily cap (``global_daily``); days are UTC.  Each reservation and refund is appended
to ``<[state] directory>/sms-quota.jsonl`` at once (fsync'd within 50 ms, off the sending
path) and replayed at start-up, so a restart does not reset the counters.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mup.eventlog import EventLog
from mup.ratelimit import TokenBucket

__all__ = ["Quota"]

log = Logger()

FILENAME = "sms-quota.jsonl"


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def _until_midnight(seconds: float) -> str:
    hours, minutes = divmod(math.ceil((86400 - seconds % 86400) / 60), 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Quota:
    """The SMS budget.  ``reserve`` before sending, ``refund`` if the gateway did not take it."""

    def __init__(self, state_directory: str, clock: IReactorTime, sender_burst: int = 5,
                 sender_rate: float = 10.0, sender_daily: int = 50, global_daily: int = 500
                 ) -> None:
        self._log = EventLog(os.path.join(state_directory, FILENAME), clock=clock
                             ) if state_directory else None
        self._clock = clock
        self.sender_burst = sender_burst
        self.sender_rate = sender_rate / 3600.0
        self.sender_daily = sender_daily
        self.global_daily = global_daily
        self._day = _day(clock.seconds())
        self._global = 0
        self._daily: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._events: list[tuple[float, str, int]] = []
        """Reservations (and refunds, negative) still needed to rebuild the state."""
        self._load()

    @classmethod
    def from_config(cls, config: Any, clock: IReactorTime) -> Quota:
        sms = config.section("sms")
        return cls(config.resolve_path(config.section("state").directory), clock,
                   sms.sender_burst, sms.sender_rate, sms.sender_daily, sms.global_daily)

    # The budget.

    def reserve(self, sender: str, segments: int) -> str | None:
        """Take ``segments`` from ``sender``'s budget; None if allowed, else why not (a reply)."""
        self._roll()
        key = sender.lower()
        if self.global_daily and self._global + segments > self.global_daily:
            return (f"The SMS budget for everyone today ({self.global_daily} segments) is "
                    f"spent; it resets in {_until_midnight(self._clock.seconds())} (midnight UTC).")
        used = self._daily.get(key, 0)
        if self.sender_daily and used + segments > self.sender_daily:
            left = self.sender_daily - used
            return (f"You have {left} of your {self.sender_daily} SMS segments left today and "
                    f"this needs {segments}; it resets in "
                    f"{_until_midnight(self._clock.seconds())} (midnight UTC).")
        bucket = self._bucket(key)
        if segments > self.sender_burst and self.sender_rate:
            return (f"That needs {segments} segments, more than the {self.sender_burst} you may "
                    "send at once.")
        if not bucket.try_take(segments):
            wait = bucket.delay(segments)
            return (f"You are sending SMS too fast; try again in "
                    f"{_human_seconds(wait)}.")
        try:
            self._record(key, segments)
        except OSError as e:
            self._buckets[key] = TokenBucket(  # give the tokens back: nothing was taken
                self.sender_burst, self.sender_rate, self._clock,
                tokens=min(bucket.tokens + segments, self.sender_burst))
            log.error("SMS quota state {path} cannot be written: {error}",
                      path=self._log.path if self._log else "", error=e)
            return ("I can't record the SMS budget right now (the state directory is not "
                    "writable); tell the bot's operator.")
        self._daily[key] = used + segments
        self._global += segments
        return None

    def refund(self, sender: str, segments: int) -> None:
        """Give back what ``reserve`` took, for an SMS the gateway did not take."""
        self._roll()
        key = sender.lower()
        if key in self._daily:
            self._daily[key] = max(self._daily[key] - segments, 0)
        self._global = max(self._global - segments, 0)
        bucket = self._bucket(key)
        self._buckets[key] = TokenBucket(self.sender_burst, self.sender_rate, self._clock,
                                         tokens=min(bucket.tokens + segments, self.sender_burst))
        self._record(key, -segments)

    def used(self, sender: str) -> int:
        """Segments ``sender`` sent today."""
        self._roll()
        return self._daily.get(sender.lower(), 0)

    @property
    def used_globally(self) -> int:
        self._roll()
        return self._global

    # Keeping it.

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.sender_burst, self.sender_rate,
                                                      self._clock)
        return bucket

    def _roll(self) -> None:
        today = _day(self._clock.seconds())
        if today != self._day:
            self._day, self._global, self._daily = today, 0, {}

    def _horizon(self) -> float:
        """How far back events still matter: today's quota, and a bucket's refill."""
        refill = self.sender_burst / self.sender_rate if self.sender_rate else 0.0
        return max(86400.0, refill)

    def _record(self, key: str, segments: int) -> None:
        now = self._clock.seconds()
        if self._log is not None:
            self._log.append({"t": now, "s": key, "n": segments})
        self._events.append((now, key, segments))
        if self._log is None:
            return
        if self._log.lines > 2 * len(self._events) + 1000:
            self._prune(now)
            self._log.compact({"t": t, "s": k, "n": n} for t, k, n in self._events)

    def _prune(self, now: float) -> None:
        cutoff = now - self._horizon()
        self._events = [e for e in self._events if e[0] >= cutoff]

    def _load(self) -> None:
        if self._log is None:
            return
        try:
            records = self._log.read()
        except (OSError, ValueError) as e:
            log.error("SMS quota state {path} unreadable ({error}); starting with the "
                      "budget spent until it is fixed", path=self._log.path, error=e)
            self._global = self.global_daily or 10 ** 9
            self._log = None
            return
        now = self._clock.seconds()
        for record in records:
            try:
                t, key, n = float(record["t"]), str(record["s"]), int(record["n"])
            except (KeyError, TypeError, ValueError):
                continue
            self._events.append((min(t, now), key, n))
        self._events.sort()
        self._prune(now)
        tokens: dict[str, tuple[float, float]] = {}
        for t, key, n in self._events:
            if _day(t) == self._day:
                self._daily[key] = max(self._daily.get(key, 0) + n, 0)
                self._global = max(self._global + n, 0)
            if self.sender_rate:
                left, stamp = tokens.get(key, (float(self.sender_burst), t))
                left = min(self.sender_burst, left + (t - stamp) * self.sender_rate)
                tokens[key] = (min(left - n, float(self.sender_burst)), t)
        for key, (left, stamp) in tokens.items():
            self._buckets[key] = TokenBucket(self.sender_burst, self.sender_rate, self._clock,
                                             tokens=left, stamp=stamp)
        if self._log.lines > len(self._events):
            self._log.compact({"t": t, "s": k, "n": n} for t, k, n in self._events)


def _human_seconds(seconds: float) -> str:
    seconds = max(int(seconds + 0.999), 1)
    if seconds < 120:
        return f"{seconds} s"
    return f"{(seconds + 59) // 60} min"
