"""A token bucket: a burst, then a steady rate.  Used for output flood control, per-user
command limits and per-sender SMS limits."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` tokens per second; rate 0 means unlimited."""

    def __init__(self, burst: float, rate: float, clock: IReactorTime,
                 tokens: float | None = None, stamp: float | None = None) -> None:
        self.burst = float(burst)
        self.rate = float(rate)
        self._clock = clock
        self._tokens = self.burst if tokens is None else float(tokens)
        self._stamp = clock.seconds() if stamp is None else stamp

    def _refill(self) -> None:
        now = self._clock.seconds()
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are enough now; unlimited buckets always succeed."""
        if self.rate == 0:
            return True
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def delay(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0 if they are now)."""
        if self.rate == 0:
            return 0.0
        self._refill()
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate


class PerKeyLimit:
    """A :class:`TokenBucket` per key (per user), at most ``max_keys`` of them: when full, the
    buckets back at full burst (nobody limited there) are forgotten.  Says when a key is first
    refused, so a caller warns once, then stays silent until the key is let through again."""

    def __init__(self, burst: float, rate: float, clock: IReactorTime,
                 max_keys: int = 1000) -> None:
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}
        self._warned: set[str] = set()

    def check(self, key: str) -> tuple[bool, float | None]:
        """``(allowed, wait)``: ``wait`` is set (seconds until allowed) on the first refusal of
        a run of refusals only; rate 0 allows everything."""
        if self.rate == 0:
            return True, None
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens < b.burst}
                self._warned &= self._buckets.keys()
            bucket = self._buckets[key] = TokenBucket(self.burst, self.rate, self._clock)
        if bucket.try_take():
            self._warned.discard(key)
            return True, None
        if key in self._warned:
            return False, None
        self._warned.add(key)
        return False, bucket.delay()
