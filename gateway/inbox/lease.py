"""An inbox's leases: where a pulled, unacknowledged message is, and who brings it back.

The design, and why
-------------------
A message routed to an inbox waits in the inbox's quorum queue `<prefix>.dest.<id>` like
any destination's. A lease *moves* it, on one short-lived channel with publisher confirms:

    1. basic.get from the inbox queue (unacked);
    2. publish a copy to `<prefix>.leased.<id>` with a per-message TTL of `lease_s`, and wait
       for the broker's confirm;
    3. ack the original;
    4. journal an `attempt` event ("leased until ..."): the record reads `delivering`;
    5. answer the partner, close the channel.

The leased queue dead-letters an expired message *at-least-once* back into the inbox queue
(gateway/broker/topology.py `leased_arguments`), so the lease's deadline is kept by RabbitMQ:
no gateway process holds a channel, a timer or any state between two HTTP requests, and any
replica may serve the next poll. A long poll holds its channel only for the request (at
most MAX_WAIT_S), with one consumer of prefetch 1 that wakes on the first arrival.

Acknowledging cannot remove a message from a queue by id: AMQP has no such operation, and
scanning the leased queue (get, compare, republish the others) would reorder it, reset
their TTLs and race with other replicas. So the acknowledgement is written where ids *can*
be looked up, the journal: `POST /v1/inbox/ack` commits a `delivered` event (the record
reads `delivered`, which the status API shows) and answers only after that commit. The
leased copy stays until its TTL; when it comes back to the inbox queue, the next lease
sees `delivered` in the journal and acks it away without offering it. That is why an inbox
needs the journal (gateway/settings/checks.py `inboxes`).

What a crash (SIGKILL of any replica, at any point) can do:
- before 2's confirm: the original is unacked on a channel that dies with the process and
  returns to the inbox queue (the copy, if it reached the queue, is a second copy: the
  partner may be offered the same id twice, never none);
- between 2 and 3: the same, two copies, same id; the acked one is dropped on its next lease;
- after 3: the copy is in the leased queue and comes back after `lease_s`;
- during an ack: the `delivered` event either committed (acknowledged, the 200 may be lost:
  acking again is harmless) or not (the partner got no 200 and acks again, or the message
  is offered again later). Nothing is acknowledged on the broker before the journal says so,
  and nothing leaves RabbitMQ before the partner's acknowledgement is committed.
Lease deadlines survive a gateway restart because the broker owns them; a broker restart
keeps both queues (quorum, durable) and their messages' TTLs.

Replicas: every step above is a broker operation or a journal commit, so any number of
replicas can serve one inbox at once (basic.get hands each message to one of them). They
must share the journal, as they already share dedup: PostgreSQL, or one SQLite file on one
host (gateway/intake/dedup/policy.py). Keeping the lease itself in the journal instead (a row
per leased message, the message acked out of RabbitMQ) was rejected: the message would then
live in the journal store, which is not the durable queue the issue asks for and which
retention purges; and a store-side deadline needs a sweeper process, where the broker's
dead-lettering is one already.

Cost: an acknowledged message stays in the leased queue until its lease ends, and is then
dropped by the next poll; `swgw_inbox_messages{state="leased"}` counts it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from gateway.broker.publisher import Broker
from gateway.errors import BrokerUnavailable, StoreError
from gateway.journal.model import Event, EventKind, JournalReader, JournalWriter, Status
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination, Partner
from gateway.timeutil import iso_unix, unix_or_none

log = logging.getLogger("swgw.inbox")

MAX_LIMIT = 100
"""The most messages one GET hands out."""
MAX_WAIT_S = 30.0
"""The longest long poll: well under `[server] idle_timeout_s` and common proxy timeouts."""
MAX_BATCH_BYTES = 16_000_000
"""A GET stops taking messages once their bodies reach this much (it always takes one)."""
MAX_ACK_IDS = 1000
"""The most ids one POST /v1/inbox/ack may name."""
COMMIT_TIMEOUT_S = 10.0
"""How long a request waits for its journal event's commit before answering 503."""


@dataclass(frozen=True)
class AckResult:
    """`acknowledged`: now (or already) delivered; `unknown`: no leased message of this inbox has the id."""

    acknowledged: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


class Inbox:
    """One inbox destination's leases and acknowledgements.

    Parameters:
        dest: the inbox destination (`kind = "inbox"`); its `lease_s` is the lease length.
        broker: the publishing connection; each lease opens and closes its own channel on it.
        writer / reader: the journal (required: see the module docstring).
        senders: every configured partner, the senders an acknowledged id may belong to.
        metrics: the inbox gauges and counters.
    """

    def __init__(
        self,
        dest: Destination,
        broker: Broker,
        writer: JournalWriter,
        reader: JournalReader,
        senders: Sequence[Partner],
        metrics: Metrics,
    ) -> None:
        self.dest = dest
        self.broker = broker
        self.writer = writer
        self.reader = reader
        self.senders = tuple(p.id for p in senders)
        self.metrics = metrics
        self.queue_name = broker.names.queue(dest.id)
        self.leased_name = broker.names.leased(dest.id)

    # -- leasing -----------------------------------------------------------------------
    async def lease(self, limit: int, wait_s: float) -> list[QueuedMessage]:
        """Up to `limit` messages, each now leased for `lease_s`; waits up to `wait_s` for a first one."""
        self.metrics.inbox_last_poll.labels(self.dest.id).set(time.time())
        conn = self.broker.connection
        if conn is None or not self.broker.ready:
            raise BrokerUnavailable(
                "The message broker is not reachable; retry after the Retry-After delay.",
                retry_after_s=self.broker.settings.broker.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_s, MAX_WAIT_S)
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.get_queue(self.queue_name, ensure=False)
            taken = await self._take(channel, queue, limit)
            while not taken and loop.time() < deadline:
                first = await self._wait(channel, queue, deadline - loop.time())
                if first is None:
                    break
                one = await self._lease_one(channel, first)  # None: an acknowledged copy, dropped; wait on
                if one is not None:
                    taken = [one, *await self._take(channel, queue, limit - 1)]
            times = [t for t in (unix_or_none(m.received_at) for m in taken) if t is not None]
            if times:
                # The oldest message this poll saw: the queue's head, or an expired lease behind it.
                self.metrics.inbox_oldest_seen.labels(self.dest.id).set(min(times))
            return taken
        finally:
            # Anything still unacked on this channel goes back to the inbox queue.
            with contextlib.suppress(Exception):
                await channel.close()

    async def _take(self, channel: AbstractChannel, queue: AbstractQueue, limit: int) -> list[QueuedMessage]:
        out: list[QueuedMessage] = []
        size = 0
        while len(out) < limit and size < MAX_BATCH_BYTES:
            incoming = await queue.get(no_ack=False, fail=False)
            if incoming is None:
                break
            message = await self._lease_one(channel, incoming)
            if message is not None:
                out.append(message)
                size += len(message.body)
        return out

    async def _wait(
        self, channel: AbstractChannel, queue: AbstractQueue, wait_s: float
    ) -> AbstractIncomingMessage | None:
        """The first message to arrive within `wait_s`, unacked; None if none came.

        Prefetch 1: the broker hands this consumer one message and no other until it is
        acked, and the consumer is cancelled before the message is leased.
        """
        await channel.set_qos(prefetch_count=1)
        arrived: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not arrived.done():
                arrived.set_result(message)

        tag = await queue.consume(on_message)
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.shield(arrived)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        return arrived.result() if arrived.done() else None

    async def _lease_one(self, channel: AbstractChannel, incoming: AbstractIncomingMessage) -> QueuedMessage | None:
        """Move one message to the leased queue (confirmed), ack it; None if it was acknowledged before."""
        deaths = (incoming.headers or {}).get("x-death")
        if deaths:
            # Back from the leased queue: its lease ran out (x-death is the broker's record of it).
            self.metrics.inbox_leases_expired.labels(self.dest.id).inc()
        message = QueuedMessage.from_amqp(incoming).unparked()  # x-death is a lease's end here, not parking
        if await self._acknowledged(message):
            await incoming.ack()  # its acknowledgement is committed: this copy is spent
            return None
        deadline = time.time() + self.dest.lease_s
        copy = message.to_amqp()
        copy.expiration = self.dest.lease_s  # seconds; aio-pika sends milliseconds
        copy.headers["x-swgw-lease-deadline"] = iso_unix(deadline) or ""
        await channel.default_exchange.publish(
            copy, routing_key=self.leased_name, mandatory=True, timeout=self.broker.settings.broker.confirm_timeout_s
        )  # confirmed: only then is the original acked
        await incoming.ack()
        await self._commit(
            Event(
                EventKind.ATTEMPT,
                time.time(),
                sender=message.sender,
                message_id=message.message_id,
                destination=self.dest.id,
                detail=f"leased to {self.dest.partner} until {iso_unix(deadline)}",
            )
        )
        self.metrics.inbox_leased.labels(self.dest.id).inc()
        return message

    async def _commit(self, event: Event) -> None:
        """Journal `event` and wait for its commit, bounded: a store that is down answers 503, not a hung request.

        A timeout does not take the event back: the writer still commits it when the store
        returns (a lease then reads as leased, an acknowledgement as delivered), and repeating
        either is harmless.
        """
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await self.writer.record(event)
        except TimeoutError as exc:
            raise StoreError(f"the journal did not commit within {COMMIT_TIMEOUT_S:g}s") from exc

    async def _acknowledged(self, message: QueuedMessage) -> bool:
        record = await self.reader.message(message.sender, message.message_id)
        return record is not None and record.destination == self.dest.id and record.status == Status.DELIVERED

    # -- acknowledging -----------------------------------------------------------------
    async def ack(self, message_ids: Sequence[str]) -> AckResult:
        """Commit `delivered` for each leased id of this inbox; ids already delivered count as acknowledged."""
        result = AckResult()
        for message_id in dict.fromkeys(message_ids):
            found = False
            for sender in self.senders:
                record = await self.reader.message(sender, message_id)
                if record is None or record.destination != self.dest.id:
                    continue
                if record.status == Status.DELIVERED:
                    found = True
                elif record.status == Status.DELIVERING:  # leased at least once: the partner has seen it
                    await self._commit(
                        Event(
                            EventKind.DELIVERED,
                            time.time(),
                            sender=sender,
                            message_id=message_id,
                            destination=self.dest.id,
                            detail=f"acknowledged by {self.dest.partner}",
                        )
                    )
                    self.metrics.inbox_acked.labels(self.dest.id).inc()
                    found = True
            (result.acknowledged if found else result.unknown).append(message_id)
        return result

    # -- depth -------------------------------------------------------------------------
    async def depths(self, channel: AbstractChannel) -> tuple[int, int]:
        """(waiting, leased) by passive declares; sets the depth gauges."""
        waiting = await channel.declare_queue(self.queue_name, passive=True)
        leased = await channel.declare_queue(self.leased_name, passive=True)
        counts = (waiting.declaration_result.message_count or 0, leased.declaration_result.message_count or 0)
        self.metrics.inbox_messages.labels(self.dest.id, "waiting").set(counts[0])
        self.metrics.inbox_messages.labels(self.dest.id, "leased").set(counts[1])
        if counts == (0, 0):
            self.metrics.inbox_oldest_seen.labels(self.dest.id).set(0)
        return counts
