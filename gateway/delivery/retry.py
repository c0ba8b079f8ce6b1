"""How one message is retried against one destination: backoff, Retry-After, attempt cap.

This module decides *when* to try again and *whether* an HTTP answer is worth another
try. It performs no I/O itself: the delivery worker does the POST inside the tenacity
loop built by `retrying()` and raises the error `classify()` names. Sleeping and
randomness are injected so tests run in microseconds and deterministically.

The retry loop is deliberately short-lived. A long outage is the circuit breaker's job
(`gateway/delivery/circuit.py`): once it opens, `should_continue()` turns False, the loop gives
up at once, and the message goes back to RabbitMQ instead of being held in worker
memory for hours (the dramatiq delayed-message trap, see STYLE.md).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import tenacity

from gateway.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from gateway.settings.model import Destination
from gateway.timeutil import Sleep

#: Upper bound for any Retry-After we honour, in seconds. A backend (or a proxy in front
#: of it) answering `Retry-After: 86400` must not be able to park a worker for a day.
RETRY_AFTER_CAP_S = 3600.0

# The exponent stops growing here; 2**62 times any sane min_s is far above any cap, and
# a bounded exponent keeps float arithmetic from overflowing on absurd attempt numbers.
_MAX_EXPONENT = 62

# RFC 9110 delta-seconds is 1*DIGIT. We also accept a sign and a fraction because some
# backends send "1.5" or "-1"; a negative value means "now". Anything else is garbage.
_DELTA_RE = re.compile(r"^[+-]?\d{1,20}(\.\d{1,9})?$")

_default_rng = random.Random()


def compute_backoff(attempt: int, *, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 = the first attempt).

    Exponential with full jitter inside the window `[min_s, min(max_s, min_s * 2**attempt)]`:
    attempt 1 waits between min_s and 2 * min_s, attempt 2 between min_s and 4 * min_s, and
    so on up to max_s. Full jitter matters because a backend outage fails every in-flight
    message at the same instant; without it they would all come back at the same instant
    too. The floor stays at `min_s` (rather than 0, as in textbook full jitter) because
    `backoff_min_s` is documented to operators as the shortest pause between attempts.

    The result is never negative and never above `max_s` (nor above `min_s` if
    `max_s < min_s`). Pass a seeded `rng` for reproducible values; the default is a
    module-level `random.Random`.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    low = max(0.0, min_s)
    high = max(low, min(max_s, low * math.pow(2.0, min(attempt, _MAX_EXPONENT))))
    if high <= low:
        return low
    return (rng or _default_rng).uniform(low, high)


def parse_retry_after(value: str | None, *, now: datetime, cap_s: float = RETRY_AFTER_CAP_S) -> float | None:
    """Turn a `Retry-After` header into seconds from `now`, or None if absent or unusable.

    Accepts RFC 9110 delta-seconds (`"120"`, leniently also `"1.5"`) and HTTP-dates in
    all three historic formats (IMF-fixdate, RFC 850, asctime; dates without a zone are
    GMT, as HTTP requires). Negative values and dates in the past mean "retry now" (0.0).
    Values are capped at `cap_s` (default one hour) so a hostile or broken backend cannot
    freeze a queue. Garbage (including "nan" and "inf") yields None, so the caller falls
    back to its own backoff rather than failing the delivery over a bad header.
    `now` should be timezone-aware; a naive `now` is taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_RE.match(text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), cap_s)


def classify(status: int) -> type[DeliveryError] | None:
    """Map a backend's HTTP status to the outcome of the attempt.

    - 2xx → None: delivered; ack the message.
    - 408 Request Timeout, 429 Too Many Requests, every 5xx → TransientDeliveryError:
      the backend is alive but cannot take this now; the same bytes may succeed later.
    - every other 4xx → PermanentDeliveryError: the backend judged this message and
      sending it again unchanged will get the same answer, so it is parked at once.
    - 1xx and 3xx → PermanentDeliveryError. We never follow redirects: a destination
      that moved is a configuration change for ops, and silently re-POSTing customs
      declarations to wherever a Location header points is not something a gateway
      should do. Parking keeps the message and makes the problem visible.
    - anything outside 100-599 → TransientDeliveryError: not a real HTTP answer
      (a broken proxy); retrying is harmless, and exhausted attempts still end in parking.
    """
    if 200 <= status <= 299:
        return None
    if status in (408, 429) or 500 <= status <= 599:
        return TransientDeliveryError
    if 100 <= status <= 499:
        return PermanentDeliveryError
    return TransientDeliveryError


class _DestinationWait:
    """tenacity wait: jittered backoff, raised to the error's Retry-After, capped at backoff_max_s."""

    def __init__(self, dest: Destination, rng: random.Random | None) -> None:
        self._dest = dest
        self._rng = rng

    def __call__(self, state: tenacity.RetryCallState) -> float:
        delay = compute_backoff(
            state.attempt_number,
            min_s=self._dest.backoff_min_s,
            max_s=self._dest.backoff_max_s,
            rng=self._rng,
        )
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            delay = float(retry_after)
        # Retry-After is honoured only up to our own cap: past that, the circuit breaker
        # (not a sleeping worker) is the right tool for a backend that wants a long pause.
        return min(delay, self._dest.backoff_max_s)


class _StopUnless(tenacity.stop.stop_base):
    """tenacity stop: give up once `should_continue()` is False (the circuit opened)."""

    def __init__(self, should_continue: Callable[[], bool]) -> None:
        self._should_continue = should_continue

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return not self._should_continue()


def retrying(
    dest: Destination,
    *,
    should_continue: Callable[[], bool] = lambda: True,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], Awaitable[None] | None] | None = None,
) -> tenacity.AsyncRetrying:
    """Build the retry loop for one delivery to `dest`. Make a new one per message.

    Retries only `TransientDeliveryError`; a `PermanentDeliveryError` or any other
    exception propagates after the first attempt. Stops after `dest.max_attempts`
    attempts, or as soon as `should_continue()` returns False after a failed attempt (the
    worker passes "the circuit is still closed", so an opening circuit ends every retry
    loop instead of letting them sleep through the outage). `reraise=True`: when it
    gives up, the caller sees the last `TransientDeliveryError` itself, never a
    tenacity `RetryError`.

    `sleep` and `rng` are injected for tests. `before_sleep` is tenacity's hook, called
    with the retry state before each pause (`state.upcoming_sleep` holds the seconds);
    the worker uses it for the retry log line and metric.

    Usage::

        async for attempt in retrying(dest, should_continue=lambda: breaker.state is CLOSED):
            with attempt:
                await send(message)
    """

    return tenacity.AsyncRetrying(
        sleep=sleep,
        stop=tenacity.stop_after_attempt(dest.max_attempts) | _StopUnless(should_continue),
        wait=_DestinationWait(dest, rng),
        retry=tenacity.retry_if_exception_type(TransientDeliveryError),
        before_sleep=before_sleep,
        reraise=True,
    )
