"""gateway.delivery.circuit: breaker transitions, slow-start ramp, the ramp-driven rate limiter; on a fake clock.

The token bucket itself (burst, steady rate, waiters in order, cancellation) is tested in test_pacing.py.
"""

from __future__ import annotations

import pytest

from gateway.delivery.circuit import CircuitBreaker, CircuitState, RateLimiter, SlowStart
from tests.fakes import ClockSleep, FakeClock


def breaker(threshold: int = 3) -> tuple[CircuitBreaker, list[tuple[CircuitState, CircuitState]]]:
    changes: list[tuple[CircuitState, CircuitState]] = []
    b = CircuitBreaker(failure_threshold=threshold, on_change=lambda old, new: changes.append((old, new)))
    return b, changes


def state_of(b: CircuitBreaker) -> CircuitState:
    """Read the state through a call so mypy does not narrow it across transitions."""
    return b.state


def openings(changes: list[tuple[CircuitState, CircuitState]]) -> int:
    return sum(1 for _, new in changes if new is CircuitState.OPEN)


def open_breaker(b: CircuitBreaker, threshold: int = 3) -> None:
    for _ in range(threshold):
        b.record_failure()
    assert b.state is CircuitState.OPEN


# --- CircuitState ---------------------------------------------------------------------------


def test_state_values_and_metric_codes() -> None:
    assert [(s.value, s.code) for s in CircuitState] == [("closed", 0), ("open", 1), ("half_open", 2)]


# --- CircuitBreaker -------------------------------------------------------------------------


def test_starts_closed_and_delivers() -> None:
    b, changes = breaker()
    assert b.state is CircuitState.CLOSED
    assert b.try_acquire()
    assert b.try_acquire()  # closed: every send may go
    assert changes == []


def test_opens_after_exactly_threshold_consecutive_failures() -> None:
    b, changes = breaker(threshold=3)
    b.record_failure()
    b.record_failure()
    assert state_of(b) is CircuitState.CLOSED
    b.record_failure()
    assert state_of(b) is CircuitState.OPEN
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert not b.try_acquire()


def test_success_resets_the_failure_count() -> None:
    b, _ = breaker(threshold=3)
    for _ in range(5):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state is CircuitState.CLOSED
    b.record_failure()
    b.record_failure()
    assert state_of(b) is CircuitState.CLOSED  # the count started from zero


def test_threshold_of_one_opens_on_first_failure() -> None:
    b, _ = breaker(threshold=1)
    b.record_failure()
    assert b.state is CircuitState.OPEN


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)


def test_reports_while_open_are_ignored() -> None:
    b, changes = breaker()
    open_breaker(b)
    b.record_success()
    b.record_failure()
    assert b.state is CircuitState.OPEN
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]


def test_probe_half_opens_and_allows_exactly_one_trial() -> None:
    b, changes = breaker()
    open_breaker(b)
    b.probe_succeeded()
    assert b.state is CircuitState.HALF_OPEN
    assert b.try_acquire()
    assert not b.try_acquire()
    assert not b.try_acquire()
    assert changes[-1] == (CircuitState.OPEN, CircuitState.HALF_OPEN)


def test_trial_success_closes() -> None:
    b, changes = breaker()
    open_breaker(b)
    b.probe_succeeded()
    assert b.try_acquire()
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert b.try_acquire()
    assert changes[-1] == (CircuitState.HALF_OPEN, CircuitState.CLOSED)


def test_trial_failure_reopens_and_next_probe_grants_a_new_trial() -> None:
    b, changes = breaker()
    open_breaker(b)
    b.probe_succeeded()
    assert b.try_acquire()
    b.record_failure()
    assert b.state is CircuitState.OPEN
    assert openings(changes) == 2
    assert changes[-1] == (CircuitState.HALF_OPEN, CircuitState.OPEN)
    b.probe_succeeded()
    assert b.try_acquire()


def test_after_reclosing_it_takes_a_full_threshold_to_open_again() -> None:
    b, _ = breaker(threshold=3)
    open_breaker(b)
    b.probe_succeeded()
    b.try_acquire()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is CircuitState.CLOSED


def test_one_message_failing_again_and_again_counts_once() -> None:
    # A poison message retrying on its own must not open the circuit for everybody.
    b, changes = breaker(threshold=3)
    for _ in range(50):
        b.record_failure("poison")
    assert b.state is CircuitState.CLOSED
    assert changes == []
    b.record_failure("x")
    assert state_of(b) is CircuitState.CLOSED  # counted once: "poison" and "x" make two of three
    b.record_failure("y")
    assert state_of(b) is CircuitState.OPEN


def test_distinct_messages_failing_open_the_circuit() -> None:
    b, changes = breaker(threshold=3)
    b.record_failure("a")
    b.record_failure("a")
    b.record_failure("b")
    assert b.state is CircuitState.CLOSED
    b.record_failure("c")
    assert b.state is CircuitState.OPEN
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]


def test_a_success_forgets_which_messages_failed() -> None:
    b, _ = breaker(threshold=2)
    b.record_failure("a")
    b.record_success()
    b.record_failure("a")
    assert b.state is CircuitState.CLOSED
    b.record_failure("b")
    assert b.state is CircuitState.OPEN


def test_force_open_opens_from_any_state_once() -> None:
    b, changes = breaker(threshold=100)
    b.force_open()
    b.force_open()
    assert b.state is CircuitState.OPEN
    assert openings(changes) == 1
    b.probe_succeeded()
    b.force_open()
    assert changes[-1] == (CircuitState.HALF_OPEN, CircuitState.OPEN)


def test_probe_is_a_no_op_when_not_open() -> None:
    b, changes = breaker()
    b.probe_succeeded()
    assert state_of(b) is CircuitState.CLOSED
    open_breaker(b)
    b.probe_succeeded()
    assert b.try_acquire()
    b.probe_succeeded()  # a second probe must not hand out a second trial
    assert state_of(b) is CircuitState.HALF_OPEN
    assert not b.try_acquire()
    assert len(changes) == 2


# --- SlowStart -------------------------------------------------------------------------------


def ramp(clock: FakeClock, **kw: float) -> SlowStart:
    opts: dict[str, float] = {"max_rate_per_s": 100.0, "max_concurrency": 8, "ramp_s": 10.0}
    opts.update(kw)
    return SlowStart(
        max_rate_per_s=opts["max_rate_per_s"],
        max_concurrency=int(opts["max_concurrency"]),
        ramp_s=opts["ramp_s"],
        clock=clock,
        start_fraction=opts.get("start_fraction", 0.1),
    )


def test_no_ramp_before_first_restart() -> None:
    s = ramp(FakeClock())
    assert s.rate == 100.0
    assert s.concurrency == 8


def test_rate_ramps_linearly_after_restart() -> None:
    clock = FakeClock()
    s = ramp(clock)
    s.restart()
    assert s.rate == pytest.approx(10.0)
    clock.advance(5.0)
    assert s.rate == pytest.approx(55.0)
    assert s.rate_at(2.5) == pytest.approx(32.5)
    clock.advance(5.0)
    assert s.rate == 100.0
    clock.advance(1000.0)
    assert s.rate == 100.0


def test_concurrency_ramps_from_one_to_max() -> None:
    s = ramp(FakeClock())
    values = [s.concurrency_at(e / 10) for e in range(0, 111)]
    assert values[0] == 1
    assert values[-1] == 8
    assert values == sorted(values)
    assert set(values) == set(range(1, 9))
    assert s.concurrency_at(5.0) == 4  # floor(8 * 0.55)


def test_zero_ramp_means_full_speed_right_after_restart() -> None:
    s = ramp(FakeClock(), ramp_s=0.0)
    s.restart()
    assert s.rate == 100.0
    assert s.concurrency == 8


def test_restart_starts_a_new_ramp() -> None:
    clock = FakeClock()
    s = ramp(clock)
    s.restart()
    clock.advance(20.0)
    assert s.rate == 100.0
    s.restart()
    assert s.rate == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_rate_per_s": 0.0}, "max_rate_per_s"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"ramp_s": -1.0}, "ramp_s"),
        ({"start_fraction": 0.0}, "start_fraction"),
        ({"start_fraction": 1.5}, "start_fraction"),
    ],
)
def test_slow_start_validates(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ramp(FakeClock(), **kw)


def test_allowance_is_the_integral_of_the_rate() -> None:
    clock = FakeClock(0.0)
    s = ramp(clock)
    s.restart()
    # 10 s from 10/s to 100/s: the trapezoid is (10 + 100) / 2 * 10 = 550 messages.
    assert s.allowance(0.0, 10.0) == pytest.approx(550.0)
    assert s.allowance(0.0, 4.0) + s.allowance(4.0, 10.0) == pytest.approx(550.0)
    assert s.allowance(10.0, 12.0) == pytest.approx(200.0)
    assert s.allowance(8.0, 12.0) == pytest.approx(s.allowance(8.0, 10.0) + 200.0)
    assert s.allowance(-5.0, 0.0) == 0.0  # before the restart earns nothing
    assert s.allowance(5.0, 5.0) == 0.0


def test_allowance_without_restart_is_full_rate() -> None:
    s = ramp(FakeClock())
    assert s.allowance(1.0, 3.0) == pytest.approx(200.0)


# --- RateLimiter: the token bucket refilled by the ramp ---------------------------------------


def limiter(clock: FakeClock, rate: float, *, ramp_s: float = 0.0) -> tuple[SlowStart, RateLimiter, ClockSleep]:
    s = SlowStart(max_rate_per_s=rate, max_concurrency=8, ramp_s=ramp_s, clock=clock)
    sleep = ClockSleep(clock)
    return s, RateLimiter(s, sleep=sleep), sleep


async def test_rate_follows_the_slow_start_ramp() -> None:
    clock = FakeClock(0.0)
    s, lim, _ = limiter(clock, 1000.0, ramp_s=10.0)
    s.restart()
    sent = 0
    while clock.t < 10.0:
        await lim.acquire()
        sent += 1
    # integral over the ramp: (100 + 1000) / 2 * 10 = 5,500, plus the 10-token burst at 100/s
    assert sent == pytest.approx(5510, rel=0.01)


async def test_restart_shrinks_a_full_bucket_to_the_new_burst() -> None:
    clock = FakeClock()
    s, lim, sleep = limiter(clock, 1000.0, ramp_s=10.0)
    assert lim.tokens == pytest.approx(100.0)
    s.restart()
    for _ in range(10):
        await lim.acquire()
    assert sleep.calls == []
    await lim.acquire()
    assert len(sleep.calls) == 1


def test_burst_must_be_positive() -> None:
    s = SlowStart(max_rate_per_s=10.0, max_concurrency=1, ramp_s=0.0, clock=FakeClock())
    with pytest.raises(ValueError, match="burst_s"):
        RateLimiter(s, burst_s=0.0)
