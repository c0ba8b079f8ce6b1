"""All destination workers of this process, their shared consumer connection, and their states.

`Delivery.start()` runs once, when the process starts, whether or not the broker is up:
the consumer connection reconnects by itself and each worker re-establishes its own
channel and consumer after every reconnect (worker.py). Nothing here depends on the
publisher connection's reconnect callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from gateway.broker.publisher import Broker
from gateway.delivery.connection import ConsumerConnection
from gateway.delivery.worker import DestinationWorker
from gateway.journal.model import JournalWriter
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination
from gateway.supervise import spawn_supervised
from gateway.timeutil import iso_unix


class Delivery:
    """The pool: one consumer connection (built by create_app), one worker per destination;
    `journal` (the process's writer; None: off) gets what the workers journal."""

    def __init__(
        self,
        destinations: tuple[Destination, ...],
        broker: Broker,
        connection: ConsumerConnection,
        metrics: Metrics,
        *,
        journal: JournalWriter | None = None,
    ) -> None:
        self.broker = broker
        self.metrics = metrics
        self.connection = connection
        # An inbox (kind = "inbox") has no HTTP backend: its partner pulls (gateway/inbox/).
        self.workers = {
            d.id: DestinationWorker(d, broker, self.connection, metrics, journal=journal)
            for d in destinations
            if not d.is_inbox
        }
        self._connection_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._connection_task is not None:
            return
        self._connection_task = spawn_supervised("delivery-connection", self.connection.run, self.metrics.task_restarts)
        for worker in self.workers.values():
            await worker.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        await asyncio.gather(*(w.stop(timeout_s) for w in self.workers.values()))
        await self.connection.close()
        if self._connection_task is not None:
            self._connection_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connection_task

    def states(self, depths: Mapping[str, tuple[int, int]] | None = None) -> dict[str, dict[str, Any]]:
        """Each worker's state; backlog and parked from `depths` if given, else from the broker's last poll."""
        depths = self.broker.depths if depths is None else depths
        out: dict[str, dict[str, Any]] = {}
        for dest_id, w in self.workers.items():
            backlog, parked = depths.get(dest_id, (None, None))
            out[dest_id] = {
                "id": dest_id,
                "state": w.state,
                "consuming": w.consuming,
                "replica": self.broker.settings.broker.replica_id,
                "active": w.active,
                "active_since": iso_unix(w.active_since),
                "consumer_tag": w.consumer_tag,
                "circuit": w.breaker.state.value,
                "paused": w.paused,
                "backlog": backlog,
                "parked": parked,
                "inflight": w.inflight,
                "delivered_total": w.delivered_total,
                "parked_total": w.parked_total,
                "last_delivery_at": iso_unix(w.last_delivery_at),
                "circuit_changed_at": iso_unix(w.circuit_changed_at),
                "rate_limit_per_s": round(w.ramp.rate, 1),
                "concurrency_limit": w.ramp.concurrency,
            }
        return out

    def update_age_gauges(self, metrics: Metrics) -> None:
        """Oldest undelivered message age: in-flight or handed-back head; 0 when the queue is empty."""
        now = time.time()
        for dest_id, w in self.workers.items():
            oldest = w.oldest_received_at()
            backlog = self.broker.depths.get(dest_id, (0, 0))[0]
            if oldest is not None:
                metrics.oldest_age.labels(dest_id).set(max(0.0, now - oldest))
            elif backlog == 0 and w.inflight == 0:
                metrics.oldest_age.labels(dest_id).set(0)
