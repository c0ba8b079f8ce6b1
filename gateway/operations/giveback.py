"""Giving held parked messages back to their quorum parking queue in the order they were read.

Listing and replay read parking with basic.get and must give back what they do not take
without changing the order (gateway/operations/replay.py). Closing the channel is not enough
on a quorum queue (checked in the RabbitMQ sources at v3.10.0 and v4.0.5, deps/rabbit/src/):
- rabbit_fifo serves returned messages before the others, but appends them behind earlier
  returns (`take_next_msg`, `return_one`): a reader that stopped inside the returned part
  would move what it read behind the rest. So a reader that stops early (a limit, the time
  limit) still reads the rest of the messages present at its start (`read_through`), without
  selecting or counting them: what it gives back is then the whole front of the queue.
- RabbitMQ 3.10 returns the messages of one return command by folding over a map
  (rabbit_fifo.erl `return/5`, `maps:fold`): a map of more than 32 keys has no order, so a
  batch of more than 32 comes back shuffled. A closed channel's messages came back shuffled
  even at 30 (0, 9, 10, ..., 18, 1, 19, ...). 4.0 keeps the order the client gave
  (`lists:foldl`), and returns a closed channel's in the order they were read.
- The queue's client on the channel (rabbit_fifo_client.erl) merges the returns it cannot
  send yet into one command: on 3.10, nacks of 32 sent back to back without waiting came back
  as one shuffled batch from the second one on (1,200 messages: 33 to 255 shuffled).
So the reader nacks with requeue in read order, `RETURN_BATCH` messages per nack (multiple),
and after each nack waits until parking shows them ready again (a passive declare's count)
before the next: 1,200 messages go back in order in about 0.3 s here. Each return spends one
delivery (topology.py sets a limit that is never reached). A reader cut off half-way
(connection lost, killed) is given back by the broker, maybe out of order; nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiormq.exceptions
from aio_pika.abc import AbstractChannel

log = logging.getLogger("swgw.replay")


class Held(Protocol):
    """A message read and held unacked: an aio-pika message (basic.get) or parkread's `Parked`."""

    @property
    def delivery_tag(self) -> int | None: ...


RETURN_BATCH = 32  # RabbitMQ 3.10 keeps the order of a return of at most 32 (a map that small is sorted)
BROKER_ERRORS = (  # what a lost connection or channel raises while reading parking (replay, parkread too)
    ConnectionError,
    OSError,
    TimeoutError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    RuntimeError,  # aio-pika: "Connection closed" / "Channel closed"
)


async def read_through(get: Callable[[], Awaitable[Held | None]], left: int, held: list[int], destination: str) -> None:
    """Read (and hold, unacked) up to `left` more messages with `get`, adding their delivery tags
    to `held`. A failure only ends it: what was read goes back when the channel closes."""
    try:
        for _ in range(left):
            raw = await get()
            if raw is None:
                return
            held.append(raw.delivery_tag or 0)
    except BROKER_ERRORS as exc:
        log.warning(
            "reading the rest of %s's parked messages failed (%s); they stay parked",
            destination,
            exc or type(exc).__name__,
            extra={"event": "parked_read_through_failed", "destination": destination},
        )


async def _ready(channel: AbstractChannel, queue: str) -> int:
    return (await channel.declare_queue(queue, passive=True)).declaration_result.message_count or 0


async def give_back(channel: AbstractChannel, queue: str, held: list[int], bound_s: float) -> None:
    """Give the messages of `held` (delivery tags, in read order) back to parking in that order.

    Nacks with requeue, `RETURN_BATCH` at a time (multiple: every unacked tag up to the last),
    each time waiting (at most `bound_s`) until parking shows them ready. If it does
    not (another reader took some meanwhile), the rest is given back without waiting. A failure
    leaves them to the channel's close: the broker returns them.
    """
    if not held:
        return
    try:
        underlay = await channel.get_underlay_channel()
        base: int | None = await _ready(channel, queue)
        for start in range(0, len(held), RETURN_BATCH):
            end = min(start + RETURN_BATCH, len(held))
            await underlay.basic_nack(held[end - 1], multiple=True, requeue=True)
            if base is not None:
                want = base + end
                try:
                    async with asyncio.timeout(bound_s):
                        while await _ready(channel, queue) < want:  # noqa: ASYNC110 (a broker count, no event)
                            await asyncio.sleep(0.005)
                except TimeoutError:
                    base = None  # someone else reads parking too: their order and ours mix anyway
    except BROKER_ERRORS as exc:
        log.warning(
            "giving parked messages back in order failed (%s); the broker returns them",
            exc or type(exc).__name__,
            extra={"event": "parked_give_back_failed", "queue": queue},
        )
