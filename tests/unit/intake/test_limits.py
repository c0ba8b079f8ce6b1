"""Per-partner rate limits (429 + Retry-After) and the global concurrency gate, on a fake clock.

The token bucket itself (refill, cap at the burst, refusals that cost nothing) is tested in test_pacing.py.
"""

from __future__ import annotations

import pytest

from gateway.errors import Overloaded, RateLimited
from gateway.intake.limits import ConcurrencyGate, PartnerRateLimiter
from gateway.settings.model import Partner
from tests.fakes import FakeClock

FAST = Partner(id="FAST", token_sha256=(), rate_per_s=2.0, burst=3)
SLOW = Partner(id="SLOW", token_sha256=(), rate_per_s=0.25, burst=1)


def _refused(limiter: PartnerRateLimiter, partner: Partner) -> RateLimited:
    with pytest.raises(RateLimited) as err:
        limiter.check(partner)
    assert err.value.status == 429
    return err.value


def test_burst_then_429_with_retry_after() -> None:
    clock = FakeClock()
    limiter = PartnerRateLimiter([FAST], clock=clock)
    for _ in range(3):
        limiter.check(FAST)
    err = _refused(limiter, FAST)
    assert err.retry_after_s == 1  # 0.5 s to the next token, rounded up to whole seconds
    assert "2 messages/s" in err.detail


def test_retry_after_reflects_a_slow_rate() -> None:
    clock = FakeClock()
    limiter = PartnerRateLimiter([SLOW], clock=clock)
    limiter.check(SLOW)
    assert _refused(limiter, SLOW).retry_after_s == 4
    clock.advance(3.0)
    assert _refused(limiter, SLOW).retry_after_s == 1
    clock.advance(1.0)
    limiter.check(SLOW)


def test_one_partner_flooding_does_not_limit_another() -> None:
    clock = FakeClock()
    limiter = PartnerRateLimiter([FAST, SLOW], clock=clock)
    limiter.check(SLOW)
    for _ in range(20):
        with pytest.raises(RateLimited):
            limiter.check(SLOW)
    for _ in range(3):
        limiter.check(FAST)


def test_a_partner_without_rate_per_s_is_not_limited() -> None:
    # The default: a partner re-sending its backlog after its own outage is a burst it never
    # asked to be limited in; only [server] max_concurrency bounds it (issue 16).
    clock = FakeClock()
    default = Partner(id="DEFAULT", token_sha256=())
    assert (default.rate_per_s, default.burst) == (None, None)
    limiter = PartnerRateLimiter([default, SLOW], clock=clock)
    for _ in range(10_000):
        limiter.check(default)
    limiter.check(SLOW)
    with pytest.raises(RateLimited):
        limiter.check(SLOW)  # opting in still limits


def test_concurrency_gate_sheds_beyond_its_limit_and_frees_slots() -> None:
    gate = ConcurrencyGate(2, retry_after_s=1)
    with gate.slot(), gate.slot():
        assert gate.in_flight == 2
        with pytest.raises(Overloaded) as err, gate.slot():
            pass
        assert err.value.status == 503
        assert err.value.retry_after_s == 1
        assert gate.in_flight == 2  # a refused request holds nothing
    assert gate.in_flight == 0
    with gate.slot():
        assert gate.in_flight == 1


def test_a_failing_request_gives_its_slot_back() -> None:
    gate = ConcurrencyGate(1)
    with pytest.raises(ValueError, match="boom"), gate.slot():
        raise ValueError("boom")
    with gate.slot():
        pass


def test_concurrency_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        ConcurrencyGate(0)
