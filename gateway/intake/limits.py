"""Flood control at the partner door: a token bucket per partner and a global concurrency bound.

Both answer at once instead of queueing the request: waiting would hold the connection,
the request and soon its body in memory, which is the growth they exist to prevent.

- `PartnerRateLimiter` is checked right after authentication and before the body is read,
  so one partner sending too fast gets 429 + Retry-After and cannot use up the capacity the
  others share. Each partner has its own token bucket (gateway/pacing.py; `rate_per_s`,
  `burst` from its `[[partners]]` table), so the others never notice. It is opt-in: a
  partner without `rate_per_s` is not limited. A fixed default (it was 50/s, burst 100)
  answered 429 to the one burst every partner eventually sends, its backlog after its own
  outage, which is traffic the gateway exists to take; the concurrency gate below protects
  the gateway without picking a number per partner. Set a rate for a partner you do not
  trust to pace itself.
- `ConcurrencyGate` is taken first thing in the ingress handler: with
  `[server] max_concurrency` requests already in flight, the next one gets 503 +
  Retry-After before anything of it is read. It bounds memory (at most that many bodies of
  at most `max_body_bytes`) and the number of requests waiting on broker confirms.

Limits are per replica: N replicas admit N times the configured rate. Neither does I/O;
the limiter's clock is injected so tests need no sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gateway.errors import Overloaded, RateLimited
from gateway.pacing import TokenBucket
from gateway.settings.model import Partner
from gateway.timeutil import Clock


class PartnerRateLimiter:
    """One token bucket per partner: `burst` requests at once, refilled at `rate_per_s`.

    Parameters:
        partners: the configured partners; each with a `rate_per_s` gets a full bucket at
            start, the others (rate_per_s None, the default) are never limited.
        clock: monotonic seconds; `time.monotonic` by default, a fake in tests.

    A refused request costs no token, so a partner that keeps retrying too early is not
    locked out for longer than its own rate implies.
    """

    def __init__(self, partners: Iterable[Partner], *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets = {p.id: self._bucket(p) for p in partners if p.rate_per_s is not None}

    def check(self, partner: Partner) -> None:
        """Admit one request from `partner` or raise RateLimited (429) with Retry-After (whole seconds, >= 1)."""
        if partner.rate_per_s is None:
            return  # opt-in: no rate of its own; [server] max_concurrency still bounds it
        bucket = self._buckets.get(partner.id)
        if bucket is None:  # a partner not known at start (tests building partners by hand)
            bucket = self._buckets[partner.id] = self._bucket(partner)
        wait_s = bucket.take()
        if wait_s > 0.0:
            raise RateLimited(
                f"Partner {partner.id!r} is limited to {partner.rate_per_s:g} messages/s "
                f"(bursts of {partner.burst}); retry after the Retry-After delay.",
                retry_after_s=max(1, math.ceil(wait_s)),
            )

    def _bucket(self, partner: Partner) -> TokenBucket:
        rate = partner.rate_per_s or 0.0  # never None here: check() returns first
        return TokenBucket(rate, burst=partner.burst or max(1, math.ceil(2 * rate)), clock=self._clock)


class ConcurrencyGate:
    """At most `limit` requests inside at once; the next one is refused, not queued.

    Parameters:
        limit: requests allowed in flight (>= 1), `[server] max_concurrency`.
        retry_after_s: the Retry-After given to refused requests; default 1 second, since
            a slot frees as soon as any request in flight finishes.
    """

    def __init__(self, limit: int, *, retry_after_s: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the block, or raise Overloaded (503)."""
        if self._in_flight >= self.limit:
            raise Overloaded(
                f"The gateway is handling its maximum of {self.limit} requests; retry after the Retry-After delay.",
                retry_after_s=self.retry_after_s,
            )
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
