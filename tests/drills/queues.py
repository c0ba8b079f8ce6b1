"""What a drill reads from (or does to) the drill node's queues, from the test's side.

Each call opens its own short AMQP connection straight to the node, never through the
gateway, so it works while the gateway is stuck, killed or blocked. These connections never
publish, so a memory alarm does not block them. Nothing here acks a message: parked
messages are browsed with `basic.get` and given back in order (gateway/operations/giveback.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from gateway.broker.topology import PARKING_ARGUMENTS, Names
from gateway.operations.giveback import give_back

PARKED_REASON = "x-swgw-parked-reason"


@dataclass(frozen=True)
class Parked:
    """One message in a parking queue.

    `reason` is the gateway's `x-swgw-parked-reason` header (None if the gateway never parked
    it); `dead_lettered` is True for a message RabbitMQ moved there by itself (the quorum
    queue's delivery limit): it has an `x-death` header and no parking reason.
    """

    message_id: str
    reason: str | None
    dead_lettered: bool

    @classmethod
    def from_amqp(cls, message: AbstractIncomingMessage) -> Parked:
        headers: dict[str, Any] = dict(message.headers or {})
        mid = message.message_id or headers.get("x-swgw-message-id") or ""
        reason = headers.get(PARKED_REASON)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if isinstance(mid, bytes):
            mid = mid.decode("utf-8", "replace")
        return cls(str(mid), None if reason is None else str(reason), "x-death" in headers and reason is None)


@contextlib.asynccontextmanager
async def _channel(url: str) -> AsyncIterator[AbstractChannel]:
    conn = await aio_pika.connect(url, timeout=5)
    try:
        yield await conn.channel()
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def depth(url: str, queue: str) -> int | None:
    """Messages ready in `queue` (a passive declare); None if the queue does not exist."""
    try:
        async with _channel(url) as ch:
            q = await ch.declare_queue(queue, passive=True)
            return int(q.declaration_result.message_count or 0)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None


async def browse(url: str, queue: str) -> list[Parked]:
    """Every message now in `queue`, in order, left where it is; [] if the queue does not exist."""
    try:
        async with _channel(url) as ch:
            q = await ch.declare_queue(queue, passive=True)
            out, held = [], []
            while (msg := await q.get(no_ack=False, fail=False)) is not None:
                out.append(Parked.from_amqp(msg))
                held.append(msg.delivery_tag or 0)
            await give_back(ch, queue, held, 10)  # a quorum queue: closing would shuffle them
            return out
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return []


async def delete(url: str, queue: str) -> None:
    async with _channel(url) as ch:
        await ch.queue_delete(queue)


async def declare_parking(url: str, queue: str) -> None:
    """Re-create a parking queue as the gateway declares it (durable, quorum, no group size)."""
    async with _channel(url) as ch:
        await ch.declare_queue(queue, durable=True, arguments=PARKING_ARGUMENTS)


async def drop(url: str, prefix: str, destinations: tuple[str, ...] = ("vnaccs",)) -> None:
    """Delete a drill's queues and exchange so the node stays light for the next drill."""
    names = Names(prefix)
    for queue in [q for d in destinations for q in (names.queue(d), names.parking(d))]:
        with contextlib.suppress(Exception):
            await delete(url, queue)
    with contextlib.suppress(Exception):
        async with _channel(url) as ch:
            await ch.exchange_delete(names.exchange)
