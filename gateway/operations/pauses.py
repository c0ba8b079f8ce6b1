"""Pause and resume that reach every replica and outlive a restart.

An operator pauses a destination on one replica (admin API); every replica must stop
delivering to it, including one started later, or the queue's single active consumer simply
moves to a replica that never heard of the pause. So a pause is written to the shared
control table first (gateway/journal/control.py) and applied locally at once; every replica
polls the table every `POLL_S` and applies what it finds, and reads it once before its
workers start consuming (`load()`), so a restarted replica comes up paused.

Without a shared store (`[dedup] backend = "none"`) a pause is this process's only, as it
always was. If the store does not answer, the admin request fails (503) rather than pausing
one replica and leaving the others delivering; the poller keeps the last state it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.delivery.pool import Delivery
from gateway.errors import StoreError
from gateway.journal.control import ControlStore, PauseState

log = logging.getLogger("swgw.operations.pauses")

POLL_S = 1.0
"""How often every replica reads the control table: the bound on how late a pause taken on
another replica is applied here."""


class Pauses:
    """The pause state of this process's workers, kept equal to the shared table's.

    `store` None: no shared store, pauses are local. `replica` names this process in the
    table's `by` column.
    """

    def __init__(self, delivery: Delivery | None, store: ControlStore | None, replica: str) -> None:
        self.delivery = delivery
        self.store = store
        self.replica = replica
        self.last: dict[str, PauseState] = {}

    @property
    def shared(self) -> bool:
        return self.store is not None

    async def set(self, destination: str, paused: bool, action: str) -> None:
        """Write the decision for every replica, then apply it here (StoreError if the table did not take it)."""
        state = PauseState(destination, paused, f"{self.replica}: {action}", time.time())
        if self.store is not None:
            await self.store.write(state)
            self.last[destination] = state
        await self._apply(destination, paused, state.by)

    async def load(self, timeout_s: float) -> None:
        """Once at start-up, before the workers consume: bounded, a store that does not answer is logged."""
        if self.store is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.store.start()
                await self.sync()
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "could not read the pause state (%s); applying it when the store answers",
                exc or type(exc).__name__,
                extra={"event": "pause_state_unavailable"},
            )

    async def sync(self) -> None:
        """Apply the table's state to this process's workers."""
        assert self.store is not None
        self.last = await self.store.states()
        for destination, state in self.last.items():
            await self._apply(destination, state.paused, state.by)

    async def run(self) -> None:
        """Poll the table for the process lifetime (an ingress-only replica has no workers to pause)."""
        if self.store is None or self.delivery is None:
            return
        while True:  # load() made the first read, before the workers started
            await asyncio.sleep(POLL_S)
            with contextlib.suppress(StoreError, TimeoutError):
                await self.sync()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def _apply(self, destination: str, paused: bool, by: str) -> None:
        worker = self.delivery.workers.get(destination) if self.delivery is not None else None
        if worker is None or worker.paused == paused:
            return
        log.info(
            "applying %s of %s from %s",
            "pause" if paused else "resume",
            destination,
            by,
            extra={"event": "pause_applied", "destination": destination, "paused": paused, "by": by},
        )
        await (worker.pause() if paused else worker.resume())
