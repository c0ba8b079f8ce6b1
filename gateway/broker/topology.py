"""The broker's topology: every name, every queue argument, and their idempotent declaration.

Every name lives under `broker.prefix`:
- `<prefix>.messages`: durable direct exchange; routing key = destination id.
- `<prefix>.dest.<id>`: durable quorum queue per destination. `x-delivery-limit` is set
  deliberately (RabbitMQ 4.x defaults it to 20 and then drops or dead-letters), and a
  message that reaches it is dead-lettered *at-least-once* into the parking queue, never
  dropped. A delivery is spent only when a channel is lost with the message unacked:
  delivery never requeues, it republishes what it hands back (gateway/delivery/deliverer.py).
- `<prefix>.parked.<id>`: durable classic queue, no TTL, no length limit. Classic because
  reading it with basic.get and returning what is not taken keeps order, and it has no
  delivery limit that could ever drop a parked message.
- `<prefix>.leased.<id>` (inboxes only, kind = "inbox"): durable quorum queue holding the
  messages a partner has pulled and not yet acknowledged. Each is published with a per-message
  TTL of the inbox's `lease_s`; the broker dead-letters it *at-least-once* back into the
  inbox's queue when it expires, so a lease is kept by RabbitMQ, not by a gateway process
  (gateway/inbox/lease.py says why). The inbox's own queue is `<prefix>.dest.<id>` like any
  destination's, so routing does not change, and no queue has `x-expires`.

Why each argument is set is said next to it; declaring is safe to repeat, and a queue that
exists with other arguments fails with PRECONDITION_FAILED, which publisher.py reports as a
topology error naming the queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from gateway.settings.model import Destination


@dataclass(frozen=True)
class Names:
    """The one helper that derives every broker name from the prefix."""

    prefix: str

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.messages"

    def queue(self, destination: str) -> str:
        return f"{self.prefix}.dest.{destination}"

    def parking(self, destination: str) -> str:
        return f"{self.prefix}.parked.{destination}"

    def leased(self, inbox: str) -> str:
        return f"{self.prefix}.leased.{inbox}"


def queue_arguments(names: Names, dest: Destination) -> dict[str, Any]:
    """Destination queue arguments, as typed data (see module docstring for why)."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": dest.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names.parking(dest.id),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
    }


PARKING_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}


def leased_arguments(names: Names, dest: Destination) -> dict[str, Any]:
    """An inbox's leased queue: expired leases go back to the inbox queue, never dropped.

    The TTL is per message (set at lease time), not `x-message-ttl`: the queue's arguments
    then do not change with `lease_s`. A queue expires messages from its head; all leases of
    one inbox have the same length, so the head is always the first to expire (after a
    `lease_s` change, leases taken before it expire no later than their own deadline plus
    the older lease_s).
    """
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names.queue(dest.id),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
    }


async def declare_topology(
    channel: AbstractChannel, names: Names, destinations: Iterable[Destination]
) -> AbstractExchange:
    """Declare the exchange, each destination's quorum queue (bound) and parking queue."""
    exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    for dest in destinations:
        queue = await channel.declare_queue(names.queue(dest.id), durable=True, arguments=queue_arguments(names, dest))
        await queue.bind(exchange, routing_key=dest.id)
        await channel.declare_queue(names.parking(dest.id), durable=True, arguments=PARKING_ARGUMENTS)
        if dest.is_inbox:
            await channel.declare_queue(names.leased(dest.id), durable=True, arguments=leased_arguments(names, dest))
    return exchange
