"""Parking: move a message the backend will not take into `<prefix>.parked.<id>`, confirmed.

A message is acked from its destination queue only after the parking queue's copy was
confirmed by the broker. When parking fails (no confirm in time, a blocked broker, the
parking queue deleted, the publisher connection being re-made), the message must neither
be lost nor POSTed again to a backend that already rejected it. The old code nack-requeued
it, and the worker POSTed it again at once: 31 POSTs in 2 s in one drill. Here a failed
park never loops: the worker keeps the message unacked, stops taking new messages from
the queue (`on_stuck`), and retries the park with a jittered, capped backoff, counting
every failure in `swgw_park_failures_total` and showing `swgw_parking_stuck` = 1 (the
`SwgwParkingStuck` alert). It gives up only when the message is no longer its own (its
channel closed, so the broker has already put it back in the queue) or the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from gateway.broker.publisher import Broker
from gateway.errors import BrokerUnavailable
from gateway.messages import EXCERPT_MAX, Parking, QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination
from gateway.timeutil import Sleep, iso, now_utc

log = logging.getLogger("swgw.delivery.parking")

PARK_BACKOFF_MIN_S = 0.5
PARK_BACKOFF_MAX_S = 30.0


class Parker:
    """Parks messages of one destination; tells its worker when parking is stuck and when it is not."""

    def __init__(
        self,
        dest: Destination,
        broker: Broker,
        metrics: Metrics,
        *,
        on_stuck: Callable[[int], None],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.dest = dest
        self.broker = broker
        self.metrics = metrics
        self.queue = broker.names.parking(dest.id)
        self._on_stuck = on_stuck
        self._sleep = sleep
        self.parked_total = 0
        metrics.park_failures.labels(dest.id)
        metrics.parking_stuck.labels(dest.id).set(0)

    async def park(
        self,
        msg: QueuedMessage,
        *,
        reason: str,
        status: int | None,
        excerpt: str,
        attempts: int,
        held: Callable[[], bool],
    ) -> bool:
        """Publish `msg` to parking with a confirm, retrying until it is confirmed.

        Returns True once parked (the caller acks), False when the message is no longer
        held (`held()` turned False: its channel closed, the broker has it back) and the
        caller must not settle it. Never raises BrokerUnavailable.
        """
        parking = Parking(
            reason=reason, status=status, excerpt=excerpt[:EXCERPT_MAX], attempts=attempts, parked_at=iso(now_utc())
        )
        copy = msg.parked(parking).to_amqp
        ctx = {
            "message_id": msg.message_id,
            "partner": msg.sender,
            "message_type": msg.message_type,
            "destination": self.dest.id,
        }
        backoff = PARK_BACKOFF_MIN_S
        stuck = False
        try:
            while True:
                try:
                    await self.broker.publish_to_queue(self.queue, copy())
                    break
                except BrokerUnavailable as exc:
                    self.metrics.park_failures.labels(self.dest.id).inc()
                    if not stuck:
                        stuck = True
                        self._on_stuck(+1)
                    if not held():
                        log.error(
                            "parking failed and the message is back in its queue: %s",
                            exc,
                            extra={"event": "park_abandoned", **ctx},
                        )
                        return False
                    wait = random.uniform(backoff / 2, backoff)
                    log.error(
                        "parking failed (%s); holding the message and retrying in %.1fs; not consuming meanwhile",
                        exc,
                        wait,
                        extra={"event": "park_failed", "reason": reason, **ctx},
                    )
                    await self._sleep(wait)
                    backoff = min(PARK_BACKOFF_MAX_S, backoff * 2)
                    if not held():  # returned to its queue while we waited: parking it now would copy it
                        log.error(
                            "parking abandoned: the message is back in its queue",
                            extra={"event": "park_abandoned", **ctx},
                        )
                        return False
        finally:
            if stuck:
                self._on_stuck(-1)
        self.parked_total += 1
        log.warning(
            "message parked: %s (status %s)",
            reason,
            status,
            extra={"event": "parked", "reason": reason, "status": status, **ctx},
        )
        return True
