"""Supervised background tasks: a loop that must never die silently.

A background loop (the broker's connect loop, a delivery worker's consumer loop, the
depth poller) that raised once and stopped would leave a destination stuck with nothing
in the logs but one traceback and nothing on the dashboards at all. `supervise()` runs
such a loop for the life of the process: when it raises, the error is logged with its
traceback, counted in `swgw_background_task_restarts_total{task}`, and the loop is
started again after a jittered, capped backoff. A loop that returns normally is done
(that is how a loop says "I was asked to stop"). Cancellation is the only way to stop a
supervised task from outside, and it is never swallowed.

The backoff resets once a run has lasted longer than `healthy_after_s`, so a loop that
fails once a day is restarted quickly every time, while one that fails at once on every
start backs off to `max_backoff_s` instead of spinning.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from gateway.timeutil import Clock, Sleep

log = logging.getLogger("swgw.supervise")


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    restarts: Counter,
    *,
    min_backoff_s: float = 0.2,
    max_backoff_s: float = 30.0,
    healthy_after_s: float = 60.0,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> None:
    """Run `run()` until it returns; restart it with backoff whenever it raises.

    `restarts` is the labelled counter `swgw_background_task_restarts_total`; the series
    for `name` is created at zero here so the first restart is visible to `increase()`.
    """
    counter = restarts.labels(name)
    backoff = min_backoff_s
    while True:
        started = clock()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if clock() - started > healthy_after_s:
                backoff = min_backoff_s
            counter.inc()
            wait = random.uniform(backoff / 2, backoff)
            log.exception(
                "background task %s failed; restarting in %.1fs",
                name,
                wait,
                extra={"event": "task_restart", "task": name},
            )
            await sleep(wait)
            backoff = min(max_backoff_s, backoff * 2)


def spawn_supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    restarts: Counter,
    *,
    max_backoff_s: float = 30.0,
) -> asyncio.Task[None]:
    """`asyncio.create_task(supervise(...))`, named for debugging and `asyncio.all_tasks()`."""
    restarts.labels(name)
    return asyncio.create_task(supervise(name, run, restarts, max_backoff_s=max_backoff_s), name=name)
