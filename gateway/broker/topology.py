"""The broker's topology: every name, every queue argument, and their idempotent declaration.

Every name lives under `broker.prefix`:
- `<prefix>.messages`: durable direct exchange; routing key = destination id.
- `<prefix>.dest.<id>`: durable quorum queue per destination. `x-delivery-limit` is set
  deliberately (RabbitMQ 4.x defaults it to 20 and then drops or dead-letters), and a
  message that reaches it is dead-lettered *at-least-once* into the parking queue, never
  dropped. A delivery is spent only when a channel is lost with the message unacked:
  delivery never requeues, it republishes what it hands back (gateway/delivery/deliverer.py).
- `<prefix>.parked.<id>`: durable quorum queue, replicated like the destination queues (same
  `x-quorum-initial-group-size`), no TTL, no length limit, no dead-letter exchange. Replicated so
  that parking, listing and replay go on while any one node is down (issue 15). What the classic
  queue it replaces gave for free is kept on purpose:
  * *No delivery limit can drop a parked message.* Listing and replay read with basic.get and
    give back what they do not take (nack with requeue, or the channel closing); a quorum
    queue counts every return against `x-delivery-limit` (3.10: `delivery_count`; 4.0:
    `acquired_count`, which any return increments; rabbit_fifo.erl `return_one`), and 4.0 defaults
    the limit to 20 (rabbit_quorum_queue.erl `?DEFAULT_DELIVERY_LIMIT`): the 21st listing
    would drop every parked message. 4.0 reads a negative limit as "none" (rabbit_fifo.erl
    `init`), but 3.10 compares `DeliveryCount > DeliveryLimit`, so -1 there would drop a
    message on its first return; neither version validates the value. Hence
    `PARKING_DELIVERY_LIMIT` = 2**31 - 1: one return per listing, unreachable.
  * *Order.* rabbit_fifo serves returned messages before the others but appends them behind
    earlier returns (`take_next_msg`, `return_one`), and 3.10 gives a batch of returns back
    shuffled. Listing and replay therefore read through every message present at their
    start and give back what they hold themselves, in read order, 32 at a time
    (gateway/operations/giveback.py).
  Checked in the RabbitMQ sources at v3.10.0 and v4.0.5 (deps/rabbit/src/). An existing
  *classic* parking queue (from before this) cannot become quorum (redeclaring fails with
  PRECONDITION_FAILED on `x-queue-type`): it is used as it is (`Declared.classic_parking`,
  warning `parking_queue_classic`, docs/operations.md says how to migrate), on one node as
  before: while that node is down it cannot be declared, parking waits for it (held, never
  acked) and the rest of the topology is declared without it.
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

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

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


SAC = "x-single-active-consumer"
GROUP_SIZE = "x-quorum-initial-group-size"


def queue_arguments(names: Names, dest: Destination, group_size: int | None = None) -> dict[str, Any]:
    """Destination queue arguments, as typed data (see module docstring for why)."""
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": dest.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names.parking(dest.id),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
    }
    if not dest.is_inbox:  # an inbox is read with basic.get, which SAC refuses (gateway/inbox/lease.py)
        args[SAC] = True  # one replica delivers at a time; the next consumer takes over when it goes
    if group_size is not None:
        args[GROUP_SIZE] = group_size
    return args


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)'.*?current is (?:the value )?(?:'(?P<current>[^']*)'|none)"
)


def inequivalent(reply: str) -> tuple[str, str | None] | None:
    """(argument, its current value or None when the queue has none) from a PRECONDITION_FAILED reply."""
    m = _INEQUIVALENT.search(reply)
    return (m["arg"], m["current"]) if m else None


@dataclass
class Declared:
    """What declaring found: queues that predate an argument this version sets.

    `without_sac`: destination queues declared before single active consumer (every replica
    consumes them at once, as before); `members_kept`: queues whose initial group size differs
    from the config (it applies only at creation, so the queue keeps its members);
    `classic_parking`: parking queues an older version made classic (on one node; used as they
    are); `unreachable`: classic parking queues whose one node was down when last declared.
    """

    without_sac: set[str] = field(default_factory=set)
    members_kept: set[str] = field(default_factory=set)
    classic_parking: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)  # parking queues whose node is down, this declare


async def declare_destination_queue(
    channel: AbstractChannel,
    open_channel: Callable[[], Awaitable[AbstractChannel]],
    name: str,
    args: dict[str, Any],
    found: Declared,
) -> tuple[AbstractChannel, AbstractQueue]:
    """Declare one destination queue, accepting an existing one that only predates SAC or differs in group size.

    Redeclaring a queue with other arguments fails with PRECONDITION_FAILED and closes the
    channel, naming the first argument that differs. Two may differ without harm: the
    initial group size (used only at creation), and single active consumer on a queue an
    older version made (it cannot be added to an existing queue: the queue must be drained
    and deleted, docs/operations.md says how). For those the declare is repeated with the
    queue's own value on a new channel, which is returned with the queue. Anything else (a
    changed delivery limit, another queue type) is raised, as before: publisher.py reports it
    as a topology error.
    """
    args = dict(args)
    while True:
        try:
            return channel, await channel.declare_queue(name, durable=True, arguments=args)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            differs = inequivalent(str(exc))
            if differs is None:
                raise
            arg, current = differs
            if arg == GROUP_SIZE and (current is None or current.isdigit()):
                if current is None:
                    args.pop(GROUP_SIZE, None)
                else:
                    args[GROUP_SIZE] = int(current)
                found.members_kept.add(name)
            elif arg == SAC and current is None and args.pop(SAC, None):
                found.without_sac.add(name)
            else:
                raise
            channel = await open_channel()


PARKING_DELIVERY_LIMIT = 2**31 - 1  # see the module docstring: set, never reached; -1 is not portable
PARKING_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": PARKING_DELIVERY_LIMIT}
QUEUE_TYPE = "x-queue-type"


def parking_arguments(group_size: int | None = None) -> dict[str, Any]:
    """A parking queue's arguments: replicated like the destination queues, no limit that could drop."""
    args = dict(PARKING_ARGUMENTS)
    if group_size is not None:
        args[GROUP_SIZE] = group_size
    return args


async def declare_parking_queue(
    channel: AbstractChannel,
    open_channel: Callable[[], Awaitable[AbstractChannel]],
    name: str,
    group_size: int | None,
    found: Declared,
) -> AbstractChannel:
    """Declare one parking queue as a quorum queue, or accept the classic one an older version made.

    A classic queue cannot be redeclared as quorum (PRECONDITION_FAILED on `x-queue-type`,
    which closes the channel): it is then checked with a passive declare on a new channel and
    used as it is (`found.classic_parking`). A different group size is tolerated as for
    destination queues. Returns the channel the declare ended on.
    """
    try:
        channel, _ = await declare_destination_queue(channel, open_channel, name, parking_arguments(group_size), found)
        return channel
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        differs = inequivalent(str(exc))
        if differs is None or differs[0] != QUEUE_TYPE or differs[1] not in (None, "classic"):
            raise
    found.classic_parking.add(name)
    channel = await open_channel()
    await channel.declare_queue(name, passive=True)
    return channel


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
    open_channel: Callable[[], Awaitable[AbstractChannel]],
    names: Names,
    destinations: Iterable[Destination],
    *,
    group_size: int | None = None,
    found: Declared | None = None,
) -> tuple[AbstractChannel, AbstractExchange]:
    """Declare the exchange, each destination's quorum queue (bound) and parking queue.

    `open_channel` makes a channel; a tolerated failure (declare_destination_queue, a classic
    parking queue from an older version, or one whose node is down) closes the channel it
    happened on, so the channel the topology ends on is returned with the exchange.
    """
    found = found if found is not None else Declared()
    found.unreachable.clear()
    found.classic_parking.clear()  # what this declare finds: a queue deleted to migrate comes back quorum
    channel = await open_channel()
    exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    for dest in destinations:
        args = queue_arguments(names, dest, group_size)
        used = channel
        channel, queue = await declare_destination_queue(channel, open_channel, names.queue(dest.id), args, found)
        if channel is not used:  # the first channel closed on a tolerated mismatch: go on with the new one
            exchange = await channel.get_exchange(names.exchange)
        await queue.bind(exchange, routing_key=dest.id)
        used = channel
        try:
            channel = await declare_parking_queue(channel, open_channel, names.parking(dest.id), group_size, found)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            # Only a classic queue has a home node: while it is down, the queue cannot be declared
            # (NOT_FOUND "home node ... is down or inaccessible"). The rest of the topology is
            # fine: parking waits for the node (parking.py holds the message, unacked), and
            # RabbitMQ keeps dead-letters at-least-once until the queue is back.
            if "down or inaccessible" not in str(exc):
                raise
            found.classic_parking.add(names.parking(dest.id))
            found.unreachable.add(names.parking(dest.id))
            channel = await open_channel()
        if channel is not used:
            exchange = await channel.get_exchange(names.exchange)
        if dest.is_inbox:
            await channel.declare_queue(names.leased(dest.id), durable=True, arguments=leased_arguments(names, dest))
    return channel, exchange
