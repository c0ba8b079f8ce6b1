"""Backlogs published straight into RabbitMQ, as intake or parking would have queued them.

`publish_backlog` pipelines confirms `window` deep: 100,000 messages take seconds, not the
minutes intake would need, and the queue content is the same (QueuedMessage.to_amqp).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika

from bench.common import DEST, RABBIT_URL, queue_depth, split_payload
from gateway.messages import Parking, QueuedMessage
from gateway.timeutil import iso, now_utc


async def depth(queue: str) -> int:
    conn = await aio_pika.connect(RABBIT_URL)
    async with conn:
        return await queue_depth(await conn.channel(), queue)


async def declare_topology(config: Path) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.broker.publisher import Broker
    from gateway.observability.metrics import Metrics
    from gateway.settings.load import load_settings

    settings = load_settings(config)
    broker = Broker(settings, Metrics(CollectorRegistry()))
    conn = await aio_pika.connect(RABBIT_URL)
    async with conn:
        try:  # declared already (by a gateway of another version, maybe): leave it as it is
            await (await conn.channel()).declare_queue(broker.names.queue(DEST), passive=True)
            return
        except aio_pika.exceptions.ChannelClosed:
            pass
        await broker.declare(await conn.channel())


async def publish_backlog(queue: str, prefix: str, count: int, *, parked: bool, window: int = 2000) -> None:
    """Publish `count` messages straight into `queue`, confirms pipelined `window` deep.

    Each is what intake would have queued (QueuedMessage.to_amqp: same body, headers and
    properties), or for `parked` what delivery parks after a 400.
    """
    pre, post = split_payload()
    run = uuid.uuid4().hex[:8]
    received = iso(now_utc())
    parking = Parking(reason="rejected", status=400, excerpt="bench", attempts=1, parked_at=received)
    conn = await aio_pika.connect(RABBIT_URL)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        sem = asyncio.Semaphore(window)

        async def one(i: int) -> None:
            try:
                mid = f"backlog-{run}-{i}"
                msg = QueuedMessage(
                    message_id=mid, correlation_id=None, message_type="CUSDEC", sender="VN-NSW",
                    receiver="VN-VNACCS", destination=DEST, received_at=received,
                    body=pre + mid.encode() + post,
                )  # fmt: skip
                if parked:
                    msg = msg.parked(parking)
                await channel.default_exchange.publish(msg.to_amqp(), routing_key=queue)
            finally:
                sem.release()

        tasks = []
        for i in range(count):
            await sem.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
