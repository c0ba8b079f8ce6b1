"""Reading a parking queue in order with a consumer, for a replay or a dry run (replay.py).

Why a consumer: basic.get costs a round trip per message. A replay of 100,000 parked messages
moved 482/s that way, where a plain mover consuming with a prefetch window moved 2,069/s
(issue 17). Why in rounds: a consumer cancelled while RabbitMQ is still delivering to it gets
nothing more, but what was on its way is returned by the broker itself (3.10's
rabbit_fifo_client, rabbitmq-server #3729), in front of anything given back after it: a
message parked during the replay would then jump ahead of older ones. So the reader consumes
in rounds, each a consumer whose prefetch window (basic.qos) is the round's size, at most
`ROUND` and at most what is left of the messages parked at the start (`present`), and acks
nothing while it runs. A round's consumer thus receives exactly its size and is cancelled
with nothing left to deliver; then the round's acks go out, and the next round starts.
- **Read order, and the bound.** `next()` returns the messages in the order parking delivered
  them; the rounds add up to `present`, so nothing parked during the replay is ever delivered.
- **Given back in order.** `give_back()` cancels the consumer (after receiving what its round
  still owes, or nothing for `IDLE_S` with none ready), then returns every message held and not
  acked, in read order, round by round: a return of several consumer tags is applied tag by
  tag, so no run of nacks spans two rounds (giveback.py: RabbitMQ 3.10 shuffles more than 32).
- **Acks after the round.** `ack(raw)` for a message of the running round is recorded and sent
  when the round's consumer is cancelled, before the next round starts: an ack would give the
  consumer room for one more delivery. The caller calls it after the publish's confirm.
- **Acks together.** The acks of an event-loop tick (or of a round's end) go out as one
  multiple ack up to the highest tag below every message still held (being moved, or to be
  given back), the others one by one: a replay sends a few acks per round, not one per
  message, and RabbitMQ settles them in one command (issue 17: ack frames were a tenth of the
  replay's CPU on both sides).
- **No hang.** basic.get answered "empty" when fewer were parked than at the start (a
  concurrent listing holds some); a consumer just receives nothing. After `IDLE_S` without a
  delivery, a passive declare counts the ready messages: none, and `next()` returns None. Some
  ready and still none delivered for the confirm timeout: ConnectionError.

RabbitMQ's consumer_timeout applies to a consumer's deliveries as to basic.get's (replay.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

from gateway.operations.giveback import BROKER_ERRORS, give_back, read_through

log = logging.getLogger("swgw.replay")

ROUND = 1024  # messages per consumer at most: its prefetch window, and the client's buffer
IDLE_S = 1.0  # no delivery this long: count what is ready


class Parked:
    """A message read from parking and held: its delivery tag, body and headers. Not an aio-pika
    IncomingMessage, which copies every property and cost 4% of a replay's CPU (issue 17)."""

    __slots__ = ("body", "delivery_tag", "headers")

    def __init__(self, message: DeliveredMessage) -> None:
        self.delivery_tag: int = message.delivery_tag or 0
        self.body: bytes = message.body
        self.headers: Mapping[str, Any] = message.header.properties.headers or {}


class ParkReader:
    """Reads the first `present` messages of the parking queue `queue` on `channel`, in rounds of
    at most `round_size` (`ROUND`), and holds them until they are acked or given back.

    `bound_s`: how long one broker answer may take (cancel-ok, a count, a give-back step), and
    how long ready messages may go undelivered. `failure`: the error that ended `stop()` (the
    last consumer not cancelled, or its acks not sent), if any: the caller reports it, and
    `ack()` raises it from then on.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        queue: str,
        present: int,
        *,
        bound_s: float,
        destination: str,
        round_size: int = ROUND,
    ) -> None:
        self._channel, self._queue, self._left = channel, queue, present
        self._bound_s, self._destination, self._round_size = bound_s, destination, round_size
        self._ctag: str | None = None  # the running round's consumer
        self._owed = 0  # deliveries the running round's consumer has still to make
        self._received: collections.deque[Parked] = collections.deque()
        self._arrived = asyncio.Event()
        self._rounds: list[list[int]] = []  # delivery tags, round by round, in delivery order
        self._done_upto = 0  # the last delivery tag of the rounds whose consumer is cancelled
        self._deferred: list[int] = []  # acks for the running round
        self._late: list[int] = []  # acks of ended rounds, sent together at the end of the tick
        self._unacked: set[int] = set()  # delivered, no ack sent yet: a multiple ack stops below them
        self._unacked_order: collections.deque[int] = collections.deque()  # the same, ascending (and acked ones)
        self._acked: set[int] = set()
        self._drained = False  # an idle wait found nothing ready: later calls do not wait again
        self.failure: BaseException | None = None

    async def _deliver(self, message: DeliveredMessage) -> None:
        # Nothing awaited: aiormq runs each delivery's callback in a task of its own, started in
        # the order the frames came, before the cancel-ok that follows them wakes `_cancel()`.
        raw = Parked(message)
        self._rounds[-1].append(raw.delivery_tag)
        self._unacked.add(raw.delivery_tag)
        self._unacked_order.append(raw.delivery_tag)
        self._owed -= 1
        self._received.append(raw)
        self._arrived.set()

    async def _start_round(self) -> None:
        size = min(self._round_size, self._left)
        await self._channel.set_qos(prefetch_count=size, timeout=self._bound_s)
        underlay = await self._channel.get_underlay_channel()
        self._rounds.append([])
        # Set first: deliveries can come before the consume-ok, and a failed consume is cancelled.
        self._ctag, self._owed, self._left = f"swgw-parkread-{len(self._rounds)}", size, self._left - size
        await underlay.basic_consume(
            self._queue, self._deliver, no_ack=False, consumer_tag=self._ctag, timeout=self._bound_s
        )

    async def _cancel(self) -> None:
        """End the running round: cancel its consumer, then send the acks recorded meanwhile."""
        if self._ctag is None:
            return
        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_cancel(self._ctag, timeout=self._bound_s)
        await asyncio.sleep(0)  # the deliveries before the cancel-ok are in `_received` already
        self._ctag = None
        self._done_upto = max(self._rounds[-1], default=self._done_upto)
        tags, self._deferred, self._late = self._deferred + self._late, [], []
        await self._send_acks(tags)

    async def _send_acks(self, tags: list[int]) -> None:
        """Ack `tags`: one multiple ack up to the highest of them below every tag still unacked
        (multiple acks every unacked tag up to its own), the rest one by one. The frames are all
        queued before anything else runs (only the last waits to be written): an ack queued
        after a multiple one that covers its tag would close the channel (unknown delivery tag)."""
        if not tags:
            return
        underlay = await self._channel.get_underlay_channel()
        self._unacked.difference_update(tags)
        order = self._unacked_order  # tags come in ascending order: the lowest unacked is at its front
        while order and order[0] not in self._unacked:
            order.popleft()
        low = order[0] if order else None
        tags.sort()
        below = [t for t in tags if low is None or t < low]
        frames = [(below[-1], True)] if below else []
        frames += [(tag, False) for tag in tags[len(below) :]]
        for i, (tag, multiple) in enumerate(frames):
            await underlay.basic_ack(tag, multiple=multiple, wait=i == len(frames) - 1)

    async def next(self) -> Parked | None:
        """The next message in parking order, held unacked; None when parking has no more ready."""
        while not self._received:
            if self._ctag is not None and self._owed > 0:
                if self._drained or not await self._wait():
                    self._drained = True
                    return None
                continue
            await self._cancel()  # the round is complete: nothing more can come to it
            if not self._left:
                return None
            await self._start_round()
        if self._ctag is not None and self._owed == 0 and self._left and len(self._received) < self._round_size:
            await self._cancel()  # the next round arrives while this one is read
            await self._start_round()
        return self._received.popleft()

    async def ack(self, raw: Parked) -> None:
        """Ack `raw` (from next()): at the end of this tick if its round is over, else at the round's
        end (module docstring). Waits at most `bound_s` for the acks to be written."""
        tag = raw.delivery_tag
        if self.failure is not None:
            raise self.failure
        self._acked.add(tag)
        if tag > self._done_upto:
            self._deferred.append(tag)
            return
        self._late.append(tag)
        if len(self._late) == 1:  # the first of the tick sends them all, once the others are in
            await asyncio.sleep(0)
            late, self._late = self._late, []
            try:
                async with asyncio.timeout(self._bound_s):  # a blocked connection cannot write them
                    await self._send_acks(late)
            except BROKER_ERRORS as exc:
                self.failure = self.failure or exc
                raise

    async def read_through(self, left: int) -> None:
        """Read up to `left` more, returning none of them: held, and given back in place."""
        await read_through(self.next, left, [], self._destination)  # next() records the tags itself

    async def _wait(self) -> bool:
        """Wait for a delivery: False if none came within IDLE_S and parking has none ready."""
        quiet_s = 0.0
        while not self._received:
            self._arrived.clear()
            try:
                async with asyncio.timeout(IDLE_S):
                    await self._arrived.wait()
            except TimeoutError:
                quiet_s += IDLE_S
                if (await self._count())[0] == 0:
                    return False  # fewer than at the start: a listing holds some
                if quiet_s > self._bound_s:
                    raise ConnectionError(f"parking has messages ready but delivered none for {quiet_s:g}s") from None
        return True

    async def _count(self) -> tuple[int, int]:
        """Parking's ready messages and consumers (a passive declare)."""
        # Bounded: an RPC that gets no answer closes the channel (aiormq), returning its messages.
        ok = (await self._channel.declare_queue(self._queue, passive=True, timeout=self._bound_s)).declaration_result
        return ok.message_count or 0, ok.consumer_count or 0

    async def stop(self) -> None:
        """Receive what the running round still owes (or nothing for IDLE_S with none ready), then
        cancel its consumer and send its acks. A failure is kept in `failure` and logged: the
        channel's close then returns the messages, and `give_back()` does nothing."""
        if self.failure is not None:
            return
        try:
            while self._ctag is not None and self._owed > 0 and not self._drained:
                self._received.clear()  # held all the same: their tags are in `_rounds`
                self._drained = not await self._wait()
            await self._cancel()
        except BROKER_ERRORS as exc:
            self.failure = self.failure or exc
            log.warning(
                "ending the read of %s failed (%s); the broker returns its messages",
                self._queue,
                exc or type(exc).__name__,
                extra={"event": "parked_cancel_failed", "destination": self._destination},
            )

    async def give_back(self) -> None:
        """Stop reading, then give back every message held and not acked, in read order."""
        await self.stop()
        if self._ctag is not None:
            return
        for tags in self._rounds:  # one consumer tag per run of nacks
            await give_back(self._channel, self._queue, [t for t in tags if t not in self._acked], self._bound_s)
        if self._rounds:
            await self._settled()

    async def _settled(self) -> None:
        """Wait (at most `bound_s`) until parking shows no consumer, before the channel closes.

        RabbitMQ 3.10 sends at most 32 acks of a channel to a quorum queue ahead of their being
        applied; it keeps the rest in the channel until then, and a channel closed meanwhile loses
        them: of 200 acks sent at once before a close, 165 were lost here, the messages back in
        parking although replayed. A cancelled consumer is counted until every message it
        delivered is acked or returned, so a count of 0 says our acks and returns are all applied.
        A listing holding messages counts too: then this gives up at the bound.
        """
        try:
            async with asyncio.timeout(self._bound_s):
                while (await self._count())[1]:  # noqa: ASYNC110 (a broker count, no event)
                    await asyncio.sleep(0.005)
        except BROKER_ERRORS as exc:
            log.warning(
                "parking %s still shows a consumer (%s): a listing, or acks not yet applied",
                self._queue,
                exc or type(exc).__name__,
                extra={"event": "parked_settle_wait_failed", "destination": self._destination},
            )
