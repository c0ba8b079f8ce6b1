"""gateway.pacing: the one token bucket, on a fake clock (refusing with take(), waiting with acquire())."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pacing import TokenBucket
from tests.fakes import ClockSleep, FakeClock


def bucket(clock: FakeClock, rate: float, *, burst: float | None = None) -> tuple[TokenBucket, ClockSleep]:
    sleep = ClockSleep(clock)
    return TokenBucket(rate, burst=burst, clock=clock, sleep=sleep), sleep


# --- acquire(): wait for a token ----------------------------------------------------------------


async def test_burst_is_served_without_sleeping() -> None:
    clock = FakeClock()
    lim, sleep = bucket(clock, 2500.0)
    for _ in range(250):
        await lim.acquire()
    assert sleep.calls == []
    await lim.acquire()
    assert sleep.calls == [pytest.approx(1 / 2500)]


async def test_steady_rate_is_exact() -> None:
    clock = FakeClock()
    lim, sleep = bucket(clock, 2500.0)
    start = clock.t
    for _ in range(10_250):
        await lim.acquire()
    # the first 250 ride the burst; the other 10,000 take exactly 4 s at 2,500/s
    assert clock.t - start == pytest.approx(4.0, rel=1e-6)
    assert len(sleep.calls) == 10_000


async def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    lim, sleep = bucket(clock, 1000.0)
    for _ in range(100):
        await lim.acquire()
    clock.advance(3600.0)
    assert lim.tokens == pytest.approx(100.0)
    for _ in range(100):
        await lim.acquire()
    assert sleep.calls == []


async def test_concurrent_waiters_are_spaced_in_arrival_order() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def record(seconds: float) -> None:  # returns without moving the clock
        waits.append(seconds)

    lim = TokenBucket(10.0, clock=clock, sleep=record)
    await lim.acquire()  # the 1-token burst
    await asyncio.gather(*(lim.acquire() for _ in range(3)))
    assert waits == [pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3)]


async def test_cancelled_waiter_returns_its_token() -> None:
    clock = FakeClock()
    entered = asyncio.Event()

    async def block(seconds: float) -> None:
        entered.set()
        await asyncio.Event().wait()

    lim = TokenBucket(10.0, clock=clock, sleep=block)
    await lim.acquire()
    assert lim.tokens == pytest.approx(0.0)
    task = asyncio.create_task(lim.acquire())
    await asyncio.wait_for(entered.wait(), timeout=5)
    assert lim.tokens == pytest.approx(-1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.tokens == pytest.approx(0.0)


async def test_a_changing_rate_is_read_at_every_refill_and_earned_by_its_integral() -> None:
    clock = FakeClock(0.0)
    rate = [10.0]
    spans: list[tuple[float, float]] = []

    def earned(t0: float, t1: float) -> float:
        spans.append((t0, t1))
        return 5.0

    lim = TokenBucket(lambda: rate[0], clock=clock, earned=earned)
    assert lim.tokens == pytest.approx(1.0)  # capacity max(1, 10 * 0.1)
    rate[0] = 1000.0  # capacity follows the rate: 100
    clock.advance(2.0)
    assert lim.tokens == pytest.approx(6.0)  # 1 + what `earned` said, not 1000 * 2
    assert spans == [(0.0, 0.0), (0.0, 2.0)]


# --- take(): refuse at once ----------------------------------------------------------------------


def test_take_serves_the_burst_then_says_how_long_until_the_next_token() -> None:
    clock = FakeClock()
    b, _ = bucket(clock, 2.0, burst=3)
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == pytest.approx(0.5)
    clock.advance(0.5)  # one token earned
    assert b.take() == 0.0
    assert b.take() > 0.0


def test_take_refills_at_the_rate_and_caps_at_the_burst() -> None:
    clock = FakeClock()
    b, _ = bucket(clock, 2.0, burst=3)
    for _ in range(3):
        b.take()
    clock.advance(3600.0)  # a long pause earns no more than the burst
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() > 0.0


def test_a_refused_take_does_not_push_the_next_token_further_away() -> None:
    clock = FakeClock()
    b, _ = bucket(clock, 0.25, burst=1)
    assert b.take() == 0.0
    for _ in range(50):
        assert b.take() > 0.0
    clock.advance(4.0)
    assert b.take() == 0.0


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "word"), [({"rate": 0.0}, "rate"), ({"rate": 1.0, "burst_s": 0.0}, "burst_s")])
def test_rate_and_burst_must_be_positive(kw: dict[str, float], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        TokenBucket(clock=FakeClock(), **kw)  # type: ignore[arg-type]
