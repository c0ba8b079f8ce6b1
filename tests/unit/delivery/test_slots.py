"""The sending slots: at most the ramp's concurrency POSTs at once, and every waiter gets its turn.

`Deliverer.handle` takes a free slot without the condition's lock and wakes a waiter when it
releases one while someone waits; a release that forgot the waiters would leave the rest of a
prefetch window waiting for ever (until a circuit change happened to notify them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.broker.topology import Names
from gateway.delivery.circuit import CircuitBreaker, SlowStart
from gateway.delivery.deliverer import Deliverer
from gateway.delivery.journaling import DeliveryJournal
from gateway.delivery.sender import Answer
from gateway.journal.writer import NullWriter
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination

DEST = Destination(id="vnaccs", url="http://backend.invalid/in", concurrency=8)


class Channel:
    is_closed = False


class Raw:
    def __init__(self, i: int, acked: list[str]) -> None:
        msg = QueuedMessage(
            message_id=f"M-{i}", correlation_id=None, message_type="CUSDEC", sender="VN-NSW",
            receiver="VN-VNACCS", destination="vnaccs", received_at="2026-11-23T08:00:00.000Z", body=b"<x/>",
        )  # fmt: skip
        amqp = msg.to_amqp()
        self.body, self.headers, self.channel = amqp.body, dict(amqp.headers or {}), Channel()
        self.id, self.acked = msg.message_id, acked

    async def ack(self) -> None:
        self.acked.append(self.id)


class Sender:
    """Answers 200 after a few ticks, counting how many POSTs are open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.most = 0

    async def send(self, msg: QueuedMessage, attempt: int) -> Answer:
        self.open += 1
        self.most = max(self.most, self.open)
        for _ in range(3):
            await asyncio.sleep(0)
        self.open -= 1
        return Answer(200, "ok")

    async def probe(self) -> bool:
        return True


def deliverer(sender: Sender, concurrency: int) -> Deliverer:
    broker: Any = type("B", (), {"names": Names("t")})()
    return Deliverer(
        DEST,
        broker,
        Metrics(CollectorRegistry()),
        breaker=CircuitBreaker(failure_threshold=5),
        ramp=SlowStart(max_rate_per_s=1e6, max_concurrency=concurrency, ramp_s=0),
        sender=sender,  # type: ignore[arg-type]
        parker=None,  # type: ignore[arg-type]
        may_send=lambda: True,
        why_not=lambda: "circuit",
        stopping=lambda: False,
        journal=DeliveryJournal(NullWriter(), DEST.id),
    )


async def test_a_full_window_is_sent_at_most_concurrency_at_a_time_and_every_waiter_gets_its_turn() -> None:
    acked: list[str] = []
    sender = Sender()
    d = deliverer(sender, concurrency=3)
    raws = [Raw(i, acked) for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(d.handle(r) for r in raws)), timeout=5)  # type: ignore[arg-type]
    assert sorted(acked) == sorted(r.id for r in raws)
    assert sender.most == 3
    assert d.inflight == 0
