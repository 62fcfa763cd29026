"""Token buckets, one per key (a client IP, a user): `rate_per_minute` tokens a minute, at
most `burst` held. Pure; the clock is passed in. The table of buckets is bounded: the least
recently used bucket is dropped first (a dropped bucket comes back full, which only errs on
the side of letting a request through)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    def __init__(self, rate_per_minute: int, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._rate = rate_per_minute / 60.0
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token from `key`'s bucket. Returns 0.0 when taken, else the seconds until
        one will be there (the request is refused and nothing is taken)."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        """Retry-After is whole seconds (RFC 9110, 10.2.3), rounded up, at least 1."""
        return max(1, math.ceil(wait))
