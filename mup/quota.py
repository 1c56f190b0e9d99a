"""How much SMS each sender, and everyone together, may send: counted in segments, kept on disk.

Three limits, all configurable in ``[sms]``: a per-sender token bucket (``sender_burst`` segments
at once, refilled at ``sender_rate`` per hour), a per-sender daily quota (``sender_daily``) and a
global daily cap (``global_daily``); days are UTC.  Each sender's count for the day and bucket
are one row of the state store's ``quota`` table, written behind each reservation and refund
(never waited for on the sending path) and read at start-up, so a restart does not reset the
counters.  The global count is the sum of the senders' counts for the day.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup.config import Config
from mup.ratelimit import TokenBucket
from mup.store import StateStore
from mup.store.table import StateTable, import_file, read_json_lines

__all__ = ["Budget", "Quota"]

log = Logger()

TABLE = "quota"
LEGACY_FILENAME = "sms-quota.jsonl"
"""The JSON-lines file of reservations before the state store: imported at start-up."""


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def _until_midnight(seconds: float) -> str:
    hours, minutes = divmod(math.ceil((86400 - seconds % 86400) / 60), 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass(frozen=True, slots=True)
class Budget:
    """What a sender may still send, and when it comes back (``quota.budget(sender)``)."""

    sent_today: int
    """Segments the sender sent today (UTC)."""
    daily_left: int | None
    """Of the per-sender daily quota; None when there is none."""
    global_left: int | None
    """Of the global daily cap; None when there is none."""
    now: int | None
    """Segments that may go out right now, within every limit; None: no limit at all."""
    next_in: float
    """Seconds until the bucket gives one more segment (0 if it is full or unlimited)."""
    full_in: float
    """Seconds until the bucket is full again (``sender_burst`` at once)."""
    resets_in: float
    """Seconds until midnight UTC, when the daily counts start again."""


class Quota:
    """The SMS budget.  ``reserve`` before sending, ``refund`` if the gateway did not take it.

    ``store`` keeps it (a :class:`mup.store.StateStore`); its ``quota`` table is loaded when
    built (at once with SQLiteStateStore), and until then every reservation is refused.  With a
    ``legacy_directory``, an ``sms-quota.jsonl`` left there by an older mup is imported."""

    def __init__(self, store: StateStore, clock: IReactorTime, sender_burst: int = 5,
                 sender_rate: float = 10.0, sender_daily: int = 50, global_daily: int = 500,
                 legacy_directory: str = "") -> None:
        self._table = StateTable(store, TABLE, "SMS quota")
        self._clock = clock
        self.sender_burst = sender_burst
        self.sender_rate = sender_rate / 3600.0
        self.sender_daily = sender_daily
        self.global_daily = global_daily
        self._day = _day(clock.seconds())
        self._global = 0
        self._daily: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._legacy = os.path.join(legacy_directory, LEGACY_FILENAME) if legacy_directory \
            else ""
        self.loaded = False
        """True once the table was read: reservations are refused before (fail closed)."""
        self._table.load().addCallbacks(self._loaded, self._load_failed)

    @classmethod
    def from_config(cls, config: Config, clock: IReactorTime, store: StateStore) -> Quota:
        sms = config.section("sms")
        return cls(store, clock, sms.sender_burst, sms.sender_rate, sms.sender_daily,
                   sms.global_daily,
                   legacy_directory=config.resolve_path(config.section("state").directory))

    # The budget.

    def reserve(self, sender: str, segments: int) -> str | None:
        """Take ``segments`` from ``sender``'s budget; None if allowed, else why not (a reply)."""
        if not self.loaded or self._table.failing:
            self._table.retry()
            return ("I can't record the SMS budget right now (the bot's state cannot be "
                    "written); tell the bot's operator.")
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
        self._daily[key] = used + segments
        self._global += segments
        self._save(key)
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
        self._save(key)

    def used(self, sender: str) -> int:
        """Segments ``sender`` sent today."""
        self._roll()
        return self._daily.get(sender.lower(), 0)

    @property
    def used_globally(self) -> int:
        self._roll()
        return self._global

    def reset(self, sender: str) -> None:
        """Give ``sender`` a fresh budget: nothing sent today, a full bucket (``quota reset``)."""
        self._roll()
        key = sender.lower()
        self._global = max(self._global - self._daily.pop(key, 0), 0)
        self._buckets.pop(key, None)
        self._table.delete(key)

    def budget(self, sender: str) -> Budget:
        """What ``sender`` may still send and when it refills (for ``@sms`` with no text)."""
        self._roll()
        key = sender.lower()
        used = self._daily.get(key, 0)
        now = self._clock.seconds()
        daily_left = max(self.sender_daily - used, 0) if self.sender_daily else None
        global_left = max(self.global_daily - self._global, 0) if self.global_daily else None
        limits = [n for n in (daily_left, global_left) if n is not None]
        next_in = full_in = 0.0
        if self.sender_rate:
            bucket = self._buckets.get(key)
            tokens = bucket.tokens if bucket is not None else float(self.sender_burst)
            limits.append(min(int(tokens + 1e-9), self.sender_burst))
            if tokens < self.sender_burst:
                next_in = (math.floor(tokens + 1e-9) + 1 - tokens) / self.sender_rate
                full_in = (self.sender_burst - tokens) / self.sender_rate
        return Budget(sent_today=used, daily_left=daily_left, global_left=global_left,
                      now=min(limits) if limits else None, next_in=next_in, full_in=full_in,
                      resets_in=86400 - now % 86400)

    def describe(self, sender: str, you: bool = False) -> str:
        """``sender``'s budget in a sentence (``you``: addressed to them), for ``@sms`` with no
        text and the operators' ``quota <nick>``."""
        b = self.budget(sender)
        who, has = ("You", "have") if you else (sender, "has")
        parts = [f"{who} {has} sent {_segments(b.sent_today)} today"]
        if b.daily_left is not None:
            parts.append(f"{b.daily_left} of {self.sender_daily} left today")
        if b.now is not None:
            now = f"{b.now} can go now"
            if b.next_in and b.now < self.sender_burst:
                now += f" (one more every {_human_seconds(1 / self.sender_rate)}, "
                now += f"the next in {_human_seconds(b.next_in)})"
            parts.append(now)
        if b.global_left is not None:
            parts.append(f"everyone together has {b.global_left} of {self.global_daily} left")
        return ("; ".join(parts) + f". The day's counts reset in "
                f"{_until_midnight(self._clock.seconds())} (midnight UTC).")

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

    def _save(self, key: str) -> None:
        """Write ``key``'s row behind: today's count, and the bucket as of now."""
        bucket = self._buckets.get(key)
        row: dict[str, Any] = {"day": self._day, "used": self._daily.get(key, 0)}
        if bucket is not None:
            row["tokens"] = bucket.tokens
            row["stamp"] = self._clock.seconds()
        self._table.put(key, row)

    def _loaded(self, rows: dict[str, Any]) -> None:
        self._apply(rows)
        if self._legacy:
            import_file(self._table, self._legacy, self._read_legacy, self._apply)
        # Rows of earlier days whose bucket has refilled say nothing any more.
        now = self._clock.seconds()
        for key in rows:
            if key not in self._daily and self._refilled(key, now):
                self._buckets.pop(key, None)
                self._table.delete(key)
        self.loaded = True

    def _refilled(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        return bucket is None or not self.sender_rate or bucket.tokens >= self.sender_burst

    def _apply(self, rows: dict[str, Any]) -> None:
        """Take ``rows`` (sender -> row) into memory, replacing what was there for them."""
        now = self._clock.seconds()
        for key, row in rows.items():
            try:
                day, used = str(row["day"]), int(row["used"])
                tokens = float(row["tokens"]) if "tokens" in row else None
                stamp = min(float(row["stamp"]), now) if "stamp" in row else None
            except (KeyError, TypeError, ValueError):
                log.warn("SMS quota: the row for {sender} is unreadable; ignored", sender=key)
                continue
            if day == self._day and used > 0:
                self._daily[key] = used
            else:
                self._daily.pop(key, None)
            if tokens is not None and stamp is not None and self.sender_rate:
                self._buckets[key] = TokenBucket(self.sender_burst, self.sender_rate,
                                                 self._clock,
                                                 tokens=min(tokens, float(self.sender_burst)),
                                                 stamp=stamp)
        self._global = sum(self._daily.values())

    def _load_failed(self, failure: Failure) -> None:
        log.error("SMS quota state cannot be read ({error}); every SMS is refused until it "
                  "is fixed", error=failure.getErrorMessage())

    def _read_legacy(self, path: str) -> dict[str, Any]:
        """The old ``sms-quota.jsonl`` (reservations and refunds, one per line) as rows: the
        reservations replayed as the old code did at start-up."""
        now = self._clock.seconds()
        events = []
        for record in read_json_lines(path):
            try:
                t, key, n = float(record["t"]), str(record["s"]), int(record["n"])
            except (KeyError, TypeError, ValueError):
                continue
            events.append((min(t, now), key, n))
        events.sort(key=lambda e: e[0])  # by time only: a refund stays after its reservation
        daily: dict[str, int] = {}
        tokens: dict[str, tuple[float, float]] = {}
        for t, key, n in events:
            if _day(t) == self._day:
                daily[key] = max(daily.get(key, 0) + n, 0)
            if self.sender_rate:
                left, stamp = tokens.get(key, (float(self.sender_burst), t))
                left = min(self.sender_burst, left + (t - stamp) * self.sender_rate)
                tokens[key] = (min(left - n, float(self.sender_burst)), t)
        rows: dict[str, Any] = {}
        for key in {k for _, k, _ in events}:
            row: dict[str, Any] = {"day": self._day, "used": daily.get(key, 0)}
            if key in tokens:
                row["tokens"], row["stamp"] = tokens[key]
            rows[key] = row
        return rows


def _segments(n: int) -> str:
    return f"{n} SMS segment" + ("" if n == 1 else "s")


def _human_seconds(seconds: float) -> str:
    seconds = max(int(seconds + 0.999), 1)
    if seconds < 120:
        return f"{seconds} s"
    return f"{(seconds + 59) // 60} min"
