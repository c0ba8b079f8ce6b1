"""The AMQP connection delivery consumes on: its own, and re-made by us, not by aio-pika.

Why a connection of its own: during a memory or disk alarm RabbitMQ blocks every
connection that publishes. If delivery shared the intake's connection, its acks would
stall exactly when the queue most needs draining (RabbitMQ's guidance: separate
connections for publishers and consumers). This connection never publishes: returns and
parking go through the publisher's connection (`Broker.publish_to_queue`), so an alarm
never blocks an ack.

Why not aio-pika's robust connection: its channels restore only the queues and consumers
that were declared through them, and a worker that also keeps consumer tags of its own
ends up with two views of the truth after a reconnect (the bug behind "delivery never
resumes after a broker reconnect"). Here there is one view: a plain connection, and a
`generation` number that changes whenever a new one is up. A worker opens its channel on
the current generation, and when that channel closes, for whatever reason, it starts over
from nothing: new channel, new consumer. Nothing is restored behind its back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aio_pika.abc import AbstractChannel, AbstractConnection

from gateway.broker.nodes import Nodes, lost_future
from gateway.errors import BrokerUnavailable
from gateway.settings.model import BrokerSettings

log = logging.getLogger("swgw.delivery.connection")


class ConsumerConnection:
    """One plain AMQP connection for every delivery worker of this process, kept up by `run()`."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.nodes = Nodes(settings, "swgw-delivery")
        self.generation = 0
        self._connection: AbstractConnection | None = None
        self._lost: asyncio.Future[None] | None = None
        self._changed = asyncio.Condition()
        self._closing = False

    @property
    def up(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and self._lost is not None and not self._lost.done()

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_up(self) -> None:
        """Wait until a connection is up, or until `close()`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.up or self._closing)

    async def channel(self, prefetch: int) -> AbstractChannel:
        """A new channel with `prefetch` on the current connection (BrokerUnavailable if none)."""
        conn = self._connection
        if conn is None or not self.up:
            raise BrokerUnavailable("The message broker is not connected.", retry_after_s=5)
        channel = conn.channel(publisher_confirms=False)
        await channel.initialize(timeout=self.settings.connect_timeout_s)
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def run(self) -> None:
        """Connect to a node, wait for the connection to be lost, connect again: for the process lifetime."""
        while not self._closing:
            conn = await self.nodes.connect(closing=lambda: self._closing)
            if conn is None:
                return
            lost = lost_future(conn)
            async with self._changed:
                self._connection, self._lost = conn, lost
                self.generation += 1
                self._changed.notify_all()
            log.info(
                "delivery connection up on %s (generation %d)",
                self.nodes.current,
                self.generation,
                extra={"event": "delivery_connected", "node": self.nodes.current},
            )
            try:
                await lost
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            if not self._closing:
                log.warning("delivery connection lost; reconnecting", extra={"event": "delivery_disconnected"})
                await self.nodes.after_loss()

    async def close(self) -> None:
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        conn, self._connection = self._connection, None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
