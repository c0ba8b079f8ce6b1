"""Per-destination outage policy: a circuit breaker, a slow-start ramp and a rate limiter.

```
            failures >= threshold               probe_succeeded()
  CLOSED ─────────────────────────────▶ OPEN ─────────────────────▶ HALF_OPEN
    ▲                                    ▲                              │
    │                                    └──── trial failed ────────────┤
    └──────────────────────────────────────── trial succeeded ──────────┘
```

CLOSED delivers normally. OPEN delivers nothing: the worker stops consuming, the
backlog waits in RabbitMQ (in order, visible, costing no redeliveries) and a probe polls
the backend's health URL. HALF_OPEN lets exactly one trial message through; its outcome
decides. When the circuit closes again, `SlowStart.restart()` makes the drain ramp up
instead of hitting a just-recovered backend with hours of backlog at full rate.

`RateLimiter` paces the sends: the token bucket of gateway/pacing.py, refilled by the
ramp. Nothing here does I/O; the ramp and the limiter run on an injected monotonic clock,
so tests use a fake one. Only `RateLimiter.acquire` awaits, and only the sleep it is given.
Pausing a destination by an admin is not the breaker's business: a paused destination is
healthy, and mixing the two would make the `circuit_state` metric lie.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Callable, Hashable

from gateway.pacing import TokenBucket
from gateway.timeutil import Clock, Sleep


class CircuitState(enum.Enum):
    """Breaker state. `.value` is for logs and JSON, `.code` for the Prometheus gauge."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def code(self) -> int:
        """0 closed, 1 open, 2 half-open: stable numbers a dashboard can map."""
        return _CODES[self]


_CODES = {CircuitState.CLOSED: 0, CircuitState.OPEN: 1, CircuitState.HALF_OPEN: 2}


class CircuitBreaker:
    """Counts consecutive transient failures of one destination and opens after too many.

    Parameters:
        failure_threshold: consecutive transient failures (>= 1) that open the circuit.
            A success in between resets the count. The worker should report a permanent
            rejection (4xx) as a success: the backend answered, so it is up.
        on_change: called as `on_change(old, new)` after every transition, for logs,
            metrics (the worker keeps the time of the last change) and to restart the
            slow-start ramp on closing. It runs inside the `record_*` call, so it must not raise.

    Contract for the worker: call `try_acquire()` before each send and skip the send if it
    returns False; report every acquired send exactly once with `record_success()` or
    `record_failure()` (an abandoned trial, e.g. on shutdown, counts as a failure, or the
    circuit would stay half-open with its one trial slot taken). Reports arriving while
    OPEN come from sends started before the circuit opened and are ignored: only the
    probe decides when to try again. In HALF_OPEN any report decides, since a late
    answer from the backend is as good evidence as the trial's.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        on_change: Callable[[CircuitState, CircuitState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self._threshold = failure_threshold
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._failed_keys: set[Hashable] = set()
        self._trial_taken = False

    @property
    def state(self) -> CircuitState:
        return self._state

    def try_acquire(self) -> bool:
        """Claim permission for one send: always in CLOSED, once in HALF_OPEN, never in OPEN."""
        if self._state is CircuitState.HALF_OPEN:
            if self._trial_taken:
                return False
            self._trial_taken = True
            return True
        return self._state is CircuitState.CLOSED

    def record_success(self) -> None:
        """The backend answered (2xx, or a permanent 4xx). Closes a half-open circuit."""
        if self._state is CircuitState.CLOSED:
            self._failures = 0
            self._failed_keys.clear()
        elif self._state is CircuitState.HALF_OPEN:
            self._move(CircuitState.CLOSED)

    def record_failure(self, key: Hashable | None = None) -> None:
        """A transient failure (refused, timeout, 5xx, 408, 429). May open the circuit.

        `key` names the message that failed. Consecutive failures are counted once per
        distinct key, so one poison message retrying on its own can never open the circuit
        for everybody: it uses up its own attempts and is parked, while an outage, which
        fails every message, opens the circuit after `failure_threshold` different ones.
        Without a key every failure counts.
        """
        if self._state is CircuitState.CLOSED:
            if key is not None:
                if key in self._failed_keys:
                    return
                self._failed_keys.add(key)
            self._failures += 1
            if self._failures >= self._threshold:
                self._move(CircuitState.OPEN)
        elif self._state is CircuitState.HALF_OPEN:
            self._move(CircuitState.OPEN)

    def force_open(self) -> None:
        """Open now, whatever the count: the health probe confirmed the backend is down."""
        if self._state is not CircuitState.OPEN:
            self._move(CircuitState.OPEN)

    def probe_succeeded(self) -> None:
        """The health probe got an answer: OPEN → HALF_OPEN; no effect in other states."""
        if self._state is CircuitState.OPEN:
            self._move(CircuitState.HALF_OPEN)

    def _move(self, new: CircuitState) -> None:
        old = self._state
        self._state = new
        self._failures = 0
        self._failed_keys.clear()
        self._trial_taken = False
        if self._on_change is not None:
            self._on_change(old, new)


class SlowStart:
    """Linear ramp of a destination's allowed rate and concurrency after an outage.

    After `restart()` the allowed fraction of the maxima grows linearly from
    `start_fraction` to 1 over `ramp_s` seconds; before any `restart()`, or once the ramp
    is over, the maxima apply. Call `restart()` when the circuit closes after an outage
    (the lead may also call it at start-up, when a backlog is likely).

    Parameters:
        max_rate_per_s: the destination's steady-state rate (messages per second, > 0).
        max_concurrency: the destination's steady-state concurrency (>= 1).
        ramp_s: ramp length in seconds (>= 0); 0 disables the ramp.
        clock: monotonic seconds; `time.monotonic` by default.
        start_fraction: share of the maxima allowed right after a restart, in (0, 1];
            default 0.1. Concurrency never drops below 1.
    """

    def __init__(
        self,
        *,
        max_rate_per_s: float,
        max_concurrency: int,
        ramp_s: float,
        clock: Clock = time.monotonic,
        start_fraction: float = 0.1,
    ) -> None:
        if not max_rate_per_s > 0:
            raise ValueError(f"max_rate_per_s must be > 0, got {max_rate_per_s}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not ramp_s >= 0:
            raise ValueError(f"ramp_s must be >= 0, got {ramp_s}")
        if not 0 < start_fraction <= 1:
            raise ValueError(f"start_fraction must be in (0, 1], got {start_fraction}")
        self.max_rate_per_s = max_rate_per_s
        self.max_concurrency = max_concurrency
        self.ramp_s = ramp_s
        self.start_fraction = start_fraction
        self.clock = clock
        self._started_at = -math.inf  # never restarted: ramp long over

    def restart(self) -> None:
        """Begin a new ramp now."""
        self._started_at = self.clock()

    def elapsed_s(self) -> float:
        """Seconds since the last `restart()` (infinite if there was none)."""
        return self.clock() - self._started_at

    def fraction_at(self, elapsed_s: float) -> float:
        """Share of the maxima allowed `elapsed_s` seconds after a restart."""
        if self.ramp_s == 0 or elapsed_s >= self.ramp_s:
            return 1.0
        progress = max(elapsed_s, 0.0) / self.ramp_s
        return self.start_fraction + (1.0 - self.start_fraction) * progress

    def rate_at(self, elapsed_s: float) -> float:
        """Allowed messages per second `elapsed_s` seconds after a restart."""
        return self.max_rate_per_s * self.fraction_at(elapsed_s)

    def concurrency_at(self, elapsed_s: float) -> int:
        """Allowed concurrent sends `elapsed_s` seconds after a restart (rounded down, >= 1)."""
        allowed = math.floor(self.max_concurrency * self.fraction_at(elapsed_s) + 1e-9)
        return min(self.max_concurrency, max(1, allowed))

    @property
    def rate(self) -> float:
        return self.rate_at(self.elapsed_s())

    @property
    def concurrency(self) -> int:
        return self.concurrency_at(self.elapsed_s())

    def allowance(self, t0: float, t1: float) -> float:
        """Messages the ramp allows between clock readings `t0` and `t1` (the rate's integral).

        Time before the last `restart()` earns nothing: a restart starts over.
        """
        start = max(t0, self._started_at)
        if t1 <= start:
            return 0.0
        # Also covers "never restarted" (_started_at is -inf, so the ramp ended at -inf).
        if start >= self._started_at + self.ramp_s:
            return self.max_rate_per_s * (t1 - start)
        return self._area(t1 - self._started_at) - self._area(start - self._started_at)

    def _area(self, e: float) -> float:
        """Integral of rate_at from 0 to e, for finite e >= 0 and ramp_s > 0."""
        r, f, m = self.ramp_s, self.start_fraction, self.max_rate_per_s
        if e <= r:
            return m * (f * e + (1.0 - f) * e * e / (2.0 * r))
        return m * (f * r + (1.0 - f) * r / 2.0 + (e - r))


class RateLimiter(TokenBucket):
    """Delivery pacing: the token bucket (gateway/pacing.py) whose rate follows a `SlowStart`.

    The bucket holds up to `rate * burst_s` tokens (at least 1): the default 0.1 s of burst
    lets a 2,500/s destination send 250 messages back to back. Between refills it earns the
    ramp's integral (`SlowStart.allowance`), so it follows the ramp exactly, and a restart
    shrinks a full bucket to the new, smaller burst.

    Parameters:
        slow_start: supplies the rate and the clock.
        burst_s: seconds of traffic the bucket may hold (> 0); default 0.1.
        sleep: awaited to wait for tokens; `asyncio.sleep` by default, a fake in tests.
    """

    def __init__(self, slow_start: SlowStart, *, burst_s: float = 0.1, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(
            lambda: slow_start.rate, burst_s=burst_s, earned=slow_start.allowance, clock=slow_start.clock, sleep=sleep
        )
