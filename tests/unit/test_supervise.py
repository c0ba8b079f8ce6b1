"""gateway.supervise: a background loop that raises is logged, counted and restarted; cancel stops it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from gateway.observability.metrics import Metrics
from gateway.supervise import supervise


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def test_a_failing_loop_is_restarted_with_growing_capped_backoff_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(CollectorRegistry())
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 6:
            raise RuntimeError(f"boom {runs}")

    sleeps = Sleeps()
    with caplog.at_level(logging.ERROR, logger="swgw.supervise"):
        await supervise("t", flaky, metrics.task_restarts, min_backoff_s=1, max_backoff_s=4, sleep=sleeps)
    assert runs == 7  # six failures, then a normal return ends supervision
    assert metrics.registry.get_sample_value("swgw_background_task_restarts_total", {"task": "t"}) == 6
    assert len(sleeps.calls) == 6
    assert all(0.5 <= s <= 4 for s in sleeps.calls)
    assert sleeps.calls[-1] >= 2  # backed off to the cap's half at least
    assert sum("boom 1" in r.getMessage() or (r.exc_info and "boom" in str(r.exc_info[1])) for r in caplog.records)


async def test_backoff_resets_after_a_healthy_run() -> None:
    metrics = Metrics(CollectorRegistry())
    now = [0.0]
    runs = 0

    async def fails_after_a_long_run() -> None:
        nonlocal runs
        runs += 1
        now[0] += 100.0  # each run lasts 100 s on the fake clock: healthy
        if runs <= 5:
            raise RuntimeError("rare failure")

    sleeps = Sleeps()
    await supervise(
        "t", fails_after_a_long_run, metrics.task_restarts,
        min_backoff_s=1, max_backoff_s=64, healthy_after_s=60, sleep=sleeps, clock=lambda: now[0],
    )  # fmt: skip
    assert all(s <= 1 for s in sleeps.calls), sleeps.calls


async def test_cancel_stops_supervision_and_is_not_counted() -> None:
    metrics = Metrics(CollectorRegistry())
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("t", forever, metrics.task_restarts))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert metrics.registry.get_sample_value("swgw_background_task_restarts_total", {"task": "t"}) in (None, 0)
