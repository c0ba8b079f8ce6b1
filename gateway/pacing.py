"""The token bucket: how many things may happen now, refilled at a rate, up to a burst.

One bucket serves three pacers: each partner's request rate at the door
(gateway/intake/limits.py, which refuses with `take()`), each destination's delivery rate
(gateway/delivery/circuit.py `RateLimiter`, which waits with `acquire()` and whose rate
follows the slow-start ramp) and `swgw replay --rate` (gateway/operations/replay.py).

The bucket holds at most its capacity: `burst` tokens when given, else `rate * burst_s`
(at least 1). A rate that changes over time is a callable read at every refill; when it
changes between two refills, `earned(t0, t1)` (its integral) says how many tokens that
time earned, so the bucket follows the curve exactly. No I/O; the clock and the sleep are
injected, so tests run on fake time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.timeutil import Clock, Sleep


class TokenBucket:
    """A token bucket, full at the start.

    Parameters:
        rate: tokens earned per second (> 0), or a callable giving the rate now.
        burst: the capacity in tokens (>= 1); without it the capacity is `rate * burst_s`,
            at least 1, and follows a changing rate.
        burst_s: seconds of traffic the bucket may hold when `burst` is not given (> 0);
            default 0.1, so a 2,500/s destination may send 250 back to back.
        earned: tokens earned between two clock readings, for a rate that changes between
            refills (the slow-start ramp's integral); default `rate * elapsed`.
        clock: monotonic seconds; `time.monotonic` by default.
        sleep: awaited by `acquire()`; `asyncio.sleep` by default.
    """

    def __init__(
        self,
        rate: float | Callable[[], float],
        *,
        burst: float | None = None,
        burst_s: float = 0.1,
        earned: Callable[[float, float], float] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not callable(rate) and not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if not burst_s > 0:
            raise ValueError(f"burst_s must be > 0, got {burst_s}")
        self._rate: Callable[[], float] = rate if callable(rate) else (lambda: rate)
        self._burst = float(burst) if burst is not None else None
        self._burst_s = burst_s
        self._earned = earned
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._tokens = self._capacity(self._rate())

    @property
    def tokens(self) -> float:
        """Current balance after refill; negative while `acquire()` callers wait for reserved tokens."""
        self._refill()
        return self._tokens

    def take(self) -> float:
        """Take one token if there is one and return 0.0; else take nothing and return the
        seconds until one is earned. A refusal costs nothing, so retrying early is not punished."""
        rate = self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    async def acquire(self) -> None:
        """Wait until one token is ours.

        Returns at once while tokens are available, so at a steady rate nobody sleeps per
        call. When the bucket is empty, the caller reserves a token (the balance goes
        negative) and sleeps until it has been earned, which keeps waiters in arrival order
        without a queue. A cancelled waiter gives its token back.
        """
        rate = self._refill()
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return
        try:
            await self._sleep(-self._tokens / rate)
        except BaseException:
            self._tokens += 1.0
            raise

    def _capacity(self, rate: float) -> float:
        return self._burst if self._burst is not None else max(1.0, rate * self._burst_s)

    def _refill(self) -> float:
        now = self._clock()
        rate = self._rate()
        earned = self._earned(self._last, now) if self._earned is not None else (now - self._last) * rate
        self._last = now
        self._tokens = min(self._capacity(rate), self._tokens + earned)
        return rate
