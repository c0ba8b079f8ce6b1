"""gateway.delivery.retry: backoff bounds and jitter, Retry-After parsing, status classes, the tenacity loop.

No real sleeping anywhere: the loop gets a fake sleep that records what it was asked to
wait, and randomness comes from seeded `random.Random` instances.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
import tenacity

from gateway.delivery.retry import RETRY_AFTER_CAP_S, classify, compute_backoff, parse_retry_after, retrying
from gateway.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from gateway.settings.model import Destination

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)


class FakeSleep:
    """Records requested pauses instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def dest(**kw: object) -> Destination:
    base: dict[str, object] = {
        "id": "customs",
        "url": "http://127.0.0.1:9/in",
        "max_attempts": 5,
        "backoff_min_s": 0.5,
        "backoff_max_s": 60.0,
    }
    base.update(kw)
    return Destination(**base)  # type: ignore[arg-type]


# --- compute_backoff ---------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_backoff_stays_inside_exponential_window(attempt: int) -> None:
    rng = random.Random(attempt)
    for _ in range(200):
        d = compute_backoff(attempt, min_s=0.5, max_s=1000.0, rng=rng)
        assert 0.5 <= d <= 0.5 * 2**attempt


def test_backoff_window_grows_with_attempts() -> None:
    rng = random.Random(1)
    early = max(compute_backoff(1, min_s=1.0, max_s=1000.0, rng=rng) for _ in range(200))
    late = max(compute_backoff(6, min_s=1.0, max_s=1000.0, rng=rng) for _ in range(200))
    assert early <= 2.0
    assert late > 16.0  # 200 draws from [1, 64]: essentially certain, and seeded


def test_backoff_is_jittered() -> None:
    rng = random.Random(7)
    values = {compute_backoff(4, min_s=1.0, max_s=100.0, rng=rng) for _ in range(50)}
    assert len(values) > 40


def test_backoff_is_reproducible_with_a_seed() -> None:
    a = [compute_backoff(n, min_s=0.5, max_s=30.0, rng=random.Random(42)) for n in range(1, 10)]
    b = [compute_backoff(n, min_s=0.5, max_s=30.0, rng=random.Random(42)) for n in range(1, 10)]
    assert a == b


def test_backoff_capped_at_max_even_for_absurd_attempts() -> None:
    rng = random.Random(3)
    for attempt in (20, 1_000, 10**9):
        d = compute_backoff(attempt, min_s=0.5, max_s=60.0, rng=rng)
        assert 0.5 <= d <= 60.0


def test_backoff_never_negative_and_min_wins_over_inverted_max() -> None:
    assert compute_backoff(3, min_s=0.0, max_s=10.0, rng=random.Random(1)) == 0.0
    assert compute_backoff(3, min_s=-5.0, max_s=10.0, rng=random.Random(1)) == 0.0
    assert compute_backoff(3, min_s=2.0, max_s=1.0) == 2.0


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        compute_backoff(0, min_s=1.0, max_s=2.0)


# --- parse_retry_after ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("999999999999", RETRY_AFTER_CAP_S),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1e3", None),
        ("12 seconds", None),
    ],
)
def test_retry_after_delta_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Fri, 14 Mar 2025 12:00:30 GMT",  # IMF-fixdate
        "Friday, 14-Mar-25 12:00:30 GMT",  # RFC 850
        "Fri Mar 14 12:00:30 2025",  # asctime, GMT by definition
    ],
)
def test_retry_after_http_date_formats(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(30.0)


def test_retry_after_date_in_past_means_now() -> None:
    assert parse_retry_after("Fri, 14 Mar 2025 11:00:00 GMT", now=NOW) == 0.0


def test_retry_after_far_future_date_is_capped() -> None:
    assert parse_retry_after("Fri, 14 Mar 2031 12:00:00 GMT", now=NOW) == RETRY_AFTER_CAP_S
    assert parse_retry_after("600", now=NOW, cap_s=60.0) == 60.0


def test_retry_after_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Fri, 14 Mar 2025 12:01:00 GMT", now=naive) == pytest.approx(60.0)


def test_retry_after_respects_now_timezone() -> None:
    cet_now = NOW.astimezone(timezone(timedelta(hours=1)))
    assert parse_retry_after("Fri, 14 Mar 2025 12:00:10 GMT", now=cet_now) == pytest.approx(10.0)


# --- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (202, None),
        (204, None),
        (299, None),
        (408, TransientDeliveryError),
        (429, TransientDeliveryError),
        (500, TransientDeliveryError),
        (502, TransientDeliveryError),
        (503, TransientDeliveryError),
        (504, TransientDeliveryError),
        (599, TransientDeliveryError),
        (400, PermanentDeliveryError),
        (401, PermanentDeliveryError),
        (403, PermanentDeliveryError),
        (404, PermanentDeliveryError),
        (409, PermanentDeliveryError),
        (413, PermanentDeliveryError),
        (422, PermanentDeliveryError),
        (301, PermanentDeliveryError),
        (302, PermanentDeliveryError),
        (307, PermanentDeliveryError),
        (101, PermanentDeliveryError),
        (0, TransientDeliveryError),
        (600, TransientDeliveryError),
    ],
)
def test_classify(status: int, expected: type[DeliveryError] | None) -> None:
    assert classify(status) is expected


# --- retrying ------------------------------------------------------------------------------


class Backend:
    """Raises the queued errors in order, then succeeds; counts attempts."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.attempts = 0

    async def send(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retries_transient_errors_then_succeeds() -> None:
    sleep = FakeSleep()
    backend = Backend(TransientDeliveryError("refused"), TransientDeliveryError("503", status=503))
    result: str = await retrying(dest(), sleep=sleep, rng=random.Random(1))(backend.send)
    assert result == "ok"
    assert backend.attempts == 3
    assert len(sleep.calls) == 2


async def test_async_for_form_works() -> None:
    sleep = FakeSleep()
    backend = Backend(TransientDeliveryError("refused"))
    async for attempt in retrying(dest(), sleep=sleep, rng=random.Random(1)):
        with attempt:
            await backend.send()
    assert backend.attempts == 2
    assert len(sleep.calls) == 1


async def test_gives_up_after_max_attempts_and_reraises_last_error() -> None:
    sleep = FakeSleep()
    errors = [TransientDeliveryError(f"fail {i}", status=503) for i in range(10)]
    backend = Backend(*errors)
    with pytest.raises(TransientDeliveryError) as info:
        await retrying(dest(max_attempts=4), sleep=sleep, rng=random.Random(1))(backend.send)
    assert info.value is errors[3]
    assert backend.attempts == 4
    assert len(sleep.calls) == 3


async def test_permanent_error_is_not_retried() -> None:
    sleep = FakeSleep()
    rejected = PermanentDeliveryError("schema", status=400)
    backend = Backend(rejected)
    with pytest.raises(PermanentDeliveryError) as info:
        await retrying(dest(), sleep=sleep)(backend.send)
    assert info.value is rejected
    assert backend.attempts == 1
    assert sleep.calls == []


async def test_unexpected_error_is_not_retried_or_wrapped() -> None:
    sleep = FakeSleep()
    backend = Backend(KeyError("bug"))
    with pytest.raises(KeyError):
        await retrying(dest(), sleep=sleep)(backend.send)
    assert backend.attempts == 1
    assert sleep.calls == []


async def test_stops_at_once_when_circuit_opens() -> None:
    sleep = FakeSleep()
    backend = Backend(*[TransientDeliveryError("down") for _ in range(10)])
    with pytest.raises(TransientDeliveryError):
        await retrying(dest(max_attempts=8), should_continue=lambda: False, sleep=sleep)(backend.send)
    assert backend.attempts == 1
    assert sleep.calls == []


async def test_stops_when_circuit_opens_mid_loop() -> None:
    sleep = FakeSleep()
    backend = Backend(*[TransientDeliveryError("down") for _ in range(10)])
    with pytest.raises(TransientDeliveryError):
        await retrying(dest(max_attempts=8), should_continue=lambda: backend.attempts < 3, sleep=sleep)(backend.send)
    assert backend.attempts == 3
    assert len(sleep.calls) == 2


async def test_waits_follow_compute_backoff_with_same_seed() -> None:
    sleep = FakeSleep()
    backend = Backend(*[TransientDeliveryError("down") for _ in range(4)])
    await retrying(dest(max_attempts=5, backoff_min_s=1.0, backoff_max_s=6.0), sleep=sleep, rng=random.Random(9))(
        backend.send
    )
    rng = random.Random(9)
    expected = [compute_backoff(n, min_s=1.0, max_s=6.0, rng=rng) for n in range(1, 5)]
    assert sleep.calls == expected
    assert all(1.0 <= s <= 6.0 for s in sleep.calls)


async def test_retry_after_longer_than_backoff_is_honoured() -> None:
    sleep = FakeSleep()
    backend = Backend(TransientDeliveryError("429", status=429, retry_after_s=7.0))
    await retrying(dest(backoff_min_s=0.1, backoff_max_s=60.0), sleep=sleep, rng=random.Random(1))(backend.send)
    assert sleep.calls == [7.0]


async def test_retry_after_is_capped_at_backoff_max() -> None:
    sleep = FakeSleep()
    backend = Backend(TransientDeliveryError("503", status=503, retry_after_s=3600.0))
    await retrying(dest(backoff_min_s=0.1, backoff_max_s=30.0), sleep=sleep)(backend.send)
    assert sleep.calls == [30.0]


async def test_retry_after_shorter_than_backoff_does_not_shorten_it() -> None:
    sleep = FakeSleep()
    backend = Backend(TransientDeliveryError("503", status=503, retry_after_s=0.0))
    await retrying(dest(backoff_min_s=2.0, backoff_max_s=30.0), sleep=sleep, rng=random.Random(1))(backend.send)
    assert len(sleep.calls) == 1
    assert 2.0 <= sleep.calls[0] <= 4.0


async def test_before_sleep_hook_sees_upcoming_pause() -> None:
    sleep = FakeSleep()
    seen: list[tuple[int, float, str]] = []

    def hook(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        seen.append((state.attempt_number, state.upcoming_sleep, str(exc)))

    backend = Backend(TransientDeliveryError("first", retry_after_s=5.0))
    await retrying(dest(backoff_min_s=0.1), sleep=sleep, before_sleep=hook)(backend.send)
    assert seen == [(1, 5.0, "first")]
    assert sleep.calls == [5.0]
