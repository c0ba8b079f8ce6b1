"""RabbitMQ: the publishing connection, and confirmed publishing.

The topology (names, queue arguments, the declaration) is topology.py.

Publishing uses one channel with publisher confirms and `mandatory`, shared by all
requests, so confirms pipeline across concurrent partners. `publish()` returns only after
the broker's ack; every other outcome (down, blocked by an alarm, nacked, unroutable, no
confirm within `confirm_timeout_s`) raises BrokerUnavailable, which the partner sees as
503 + Retry-After. aio-pika/aiormq exceptions are translated here and nowhere else.
Intake publishes with `keep_waiting`: a confirm timeout still answers 503, but the publish
goes on waiting for the broker's late answer, which gateway/intake/dedup/policy.py uses to settle the
MessageId's claim (a late ack must not let the partner's retry queue a second copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from gateway.broker.nodes import Nodes, lost_future
from gateway.broker.topology import Declared, Names, declare_topology
from gateway.errors import BrokerUnavailable, ConfirmTimeout
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Settings
from gateway.supervise import spawn_supervised

log = logging.getLogger("swgw.broker")

_CONNECTION_ERRORS = (
    ConnectionError,
    OSError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelClosed,
    RuntimeError,  # aio-pika: "Connection closed" / "Channel closed" while reconnecting
)


def _is_blocked(connection: AbstractConnection | None) -> bool:
    """True while RabbitMQ blocks publishers (memory/disk alarm).

    aiormq tracks connection.blocked/unblocked in a private event and simply stops
    writing; without this check a publish would wait for the confirm timeout.
    """
    transport = getattr(connection, "transport", None)
    conn = getattr(transport, "connection", None)
    event = getattr(conn, "_Connection__connection_unblocked", None)
    return isinstance(event, asyncio.Event) and not event.is_set() and bool(getattr(conn, "is_opened", True))


# publish_failures_total label for each BrokerUnavailable reason raised by _confirm
_FAILURE_LABELS = {"broker_unroutable": "unroutable", "broker_nack": "nacked", "broker_unavailable": "disconnected"}


async def _confirm(publishing: Awaitable[object], key: str, retry_after_s: int) -> None:
    """Await one publish's confirm; aio-pika's answers other than an ack become BrokerUnavailable."""
    try:
        await publishing
    except aiormq.exceptions.PublishError as exc:  # Basic.Return: no queue bound
        raise BrokerUnavailable(
            f"The broker has no queue for destination {key!r} (message returned unroutable); "
            "nothing was queued. Operators: check the topology.",
            reason="broker_unroutable",
            retry_after_s=retry_after_s,
        ) from exc
    except aiormq.exceptions.DeliveryError as exc:  # Basic.Nack
        raise BrokerUnavailable(
            "The broker refused the message (nack); nothing was queued. Retry later.",
            reason="broker_nack",
            retry_after_s=retry_after_s,
        ) from exc
    except _CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(
            "The broker connection failed during publishing; the message may not be queued. "
            "Retry with the same MessageId.",
            reason="broker_unavailable",
            retry_after_s=retry_after_s,
        ) from exc


def _retrieve(task: asyncio.Task[None]) -> None:
    """Done callback of an abandoned publish: read its exception so asyncio does not report it."""
    if not task.cancelled():
        task.exception()


class Broker:
    """Owns the connection. Start it once; it reconnects (to the next node, with several) for the process lifetime."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.names = Names(settings.broker.prefix)
        self.metrics = metrics
        self.connection: AbstractConnection | None = None
        self._nodes = Nodes(settings.broker, "swgw")
        self._connections = 0  # connections that got as far as a declared topology
        self.declared = Declared()  # queues that predate an argument (topology.py)
        self._warned: set[str] = set()
        self._renewing: asyncio.Future[None] | None = None  # a new publish channel after a nack
        self._renewed_at = 0.0
        self._closing_channels: set[asyncio.Future[None]] = set()
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.topology_error: str | None = None
        self._closing = False
        self.depths: dict[str, tuple[int, int]] = {}  # last poll: destination -> (backlog, parked)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Begin connecting in the background; the gateway serves (503) until it succeeds."""
        self._task = spawn_supervised("broker-connect", self._connect_loop, self.metrics.task_restarts)

    async def close(self) -> None:
        self._closing = True
        for task in (self._task, self._renewing, *self._closing_channels):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    @property
    def ready(self) -> bool:
        conn = self.connection
        return (
            self.connected.is_set()  # set only after the topology is declared
            and self._exchange is not None
            and conn is not None
            and not conn.is_closed
            and bool(conn.connected.is_set())
            and self._channel is not None
            and not self._channel.is_closed
            and self.topology_error is None
        )

    @property
    def blocked(self) -> bool:
        return _is_blocked(self.connection)

    async def _connect_loop(self) -> None:
        """For the process lifetime: connect to a node, declare, serve until the connection is lost.

        A plain connection re-made here (not aio-pika's robust one, which only ever goes back
        to its one URL): with several nodes a lost connection moves to the next node that
        answers (nodes.py), and the topology is declared again on whichever node it is.
        """
        while not self._closing:
            conn = await self._nodes.connect(closing=lambda: self._closing)
            if conn is None:
                return
            lost = lost_future(conn)
            conn.close_callbacks.add(self._on_close)
            self.connection = conn
            try:
                if await self._setup(conn, lost):
                    if self._connections:
                        self.metrics.broker_reconnects.inc()
                        log.info(
                            "broker reconnected on %s",
                            self._nodes.current,
                            extra={"event": "broker_reconnected", "node": self._nodes.current},
                        )
                    self._connections += 1
                    await lost
            finally:
                self._on_close()
                with contextlib.suppress(Exception):
                    await conn.close()
            if not self._closing:
                await self._nodes.after_loss()

    async def _setup(self, conn: AbstractConnection, lost: asyncio.Future[None]) -> bool:
        """Open the publish channel and declare the topology; retried until it works or the connection goes."""
        while not lost.done():
            try:
                self._channel, self._exchange = await self._declare_on(conn)
                self.topology_error = None
                break
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                self.topology_error = (
                    f"{exc}: a queue or exchange exists with different arguments; delete it or align the config"
                )
                log.error("broker topology mismatch: %s", self.topology_error, extra={"event": "topology_error"})
            except _CONNECTION_ERRORS as exc:
                log.warning("broker setup failed: %s", exc, extra={"event": "broker_setup_failed"})
            await asyncio.wait((lost,), timeout=self.settings.broker.reconnect_interval_s)
        else:
            return False
        self._warn_legacy()
        self.connected.set()
        self.metrics.broker_connected.set(1)
        log.info(
            "broker connected on %s",
            self._nodes.current,
            extra={"event": "broker_connected", "node": self._nodes.current},
        )
        return True

    async def _declare_on(self, conn: AbstractConnection) -> tuple[AbstractChannel, AbstractExchange]:
        async def confirm_channel() -> AbstractChannel:
            channel = conn.channel(publisher_confirms=True, on_return_raises=True)
            await channel.initialize(timeout=self.settings.broker.connect_timeout_s)
            return channel

        return await declare_topology(
            confirm_channel,
            self.names,
            self.settings.destinations,
            group_size=self.settings.broker.quorum_initial_group_size,
            found=self.declared,
        )

    def _warn_legacy(self) -> None:
        """Once per queue: what an existing queue kept from before, and what to do about it."""
        d = self.declared
        legacy = (
            (d.without_sac, logging.WARNING, "queue_without_sac",
             "queue %s was declared before single active consumer: every replica delivers from it at once. "
             "To switch it on, drain and delete the queue (docs/operations.md, Running several replicas)"),
            (d.members_kept, logging.INFO, "queue_group_size_kept",
             "queue %s exists with another initial group size; it keeps its members "
             "(x-quorum-initial-group-size applies only when a queue is created)"),
            (d.classic_parking, logging.WARNING, "parking_queue_classic",
             "parking queue %s is a classic queue from an earlier version: it lives on one node, and while that "
             "node is down nothing can be parked, listed or replayed. To make it a replicated quorum queue, "
             "replay it until empty and delete it (docs/operations.md, Running several replicas)"),
        )  # fmt: skip
        for queues, level, event, text in legacy:
            for queue in sorted(queues - self._warned):
                log.log(level, text, queue, extra={"event": event, "queue": queue})
            self._warned |= queues
        for queue in sorted(self.declared.unreachable):
            log.warning(
                "parking queue %s is on a node that is down; parking waits until it is back",
                queue,
                extra={"event": "parking_unreachable", "queue": queue},
            )

    async def declare(self, channel: AbstractChannel) -> AbstractExchange:
        """Declare exchange, destination queues and parking queues on `channel`; safe to repeat."""

        async def only() -> AbstractChannel:  # a mismatch closes it: raised, as declare() always did
            return channel

        _, exchange = await declare_topology(
            only,
            self.names,
            self.settings.destinations,
            group_size=self.settings.broker.quorum_initial_group_size,
            found=self.declared,
        )
        return exchange

    def _on_close(self, *_: object) -> None:
        was = self.connected.is_set()
        self.metrics.broker_connected.set(0)
        self.connected.clear()
        if was and not self._closing:
            log.warning("broker connection lost", extra={"event": "broker_disconnected"})

    # -- publishing --------------------------------------------------------------------
    async def publish(self, message: QueuedMessage, *, keep_waiting: bool = False) -> None:
        """Publish to the destination's queue; return only after the broker confirmed it.

        Every failure raises BrokerUnavailable; no confirm within `confirm_timeout_s` raises
        its subclass ConfirmTimeout. With `keep_waiting` (intake, which holds a dedup claim
        on the id) the publish is not abandoned at the timeout: `ConfirmTimeout.outcome` is
        the publish still waiting for the broker's answer, and the caller owns it (await it
        bounded, or cancel it). Without it, a timed-out publish stops waiting for its confirm.
        """
        await self._confirmed(self._exchange, message.to_amqp(), message.destination, keep_waiting=keep_waiting)

    async def publish_to_queue(self, queue: str, message: aio_pika.Message) -> None:
        """Confirmed publish straight to a queue (parking, replay) via the default exchange."""
        channel = self._channel
        await self._confirmed(channel.default_exchange if channel else None, message, queue)

    async def _confirmed(
        self, exchange: AbstractExchange | None, message: aio_pika.Message, key: str, *, keep_waiting: bool = False
    ) -> None:
        retry = self.settings.broker.retry_after_s
        if not self.ready or exchange is None:
            self.metrics.publish_failures.labels("disconnected").inc()
            raise BrokerUnavailable(
                "The message broker is not reachable; nothing was queued. Retry later.",
                reason="broker_unavailable",
                retry_after_s=retry,
            )
        if self.blocked:  # the gauge itself is kept by poll_depths, not set on every publish
            self.metrics.publish_failures.labels("blocked").inc()
            raise BrokerUnavailable(
                "The message broker is refusing new messages (resource alarm); nothing was queued. Retry later.",
                reason="broker_blocked",
                retry_after_s=retry,
            )
        timeout_s = self.settings.broker.confirm_timeout_s
        started = time.perf_counter()
        confirm = _confirm(exchange.publish(message, routing_key=key, mandatory=True), key, retry)
        outcome: asyncio.Task[None] | None = None
        try:
            if keep_waiting:
                # A task of its own, so the confirm can outlive this request's wait; one per
                # publish, only on the intake path (publish_to_queue stays task-free).
                outcome = asyncio.create_task(confirm, name=f"publish-confirm-{key}")
                try:
                    done, _ = await asyncio.wait((outcome,), timeout=timeout_s)
                except asyncio.CancelledError:
                    outcome.cancel()  # a cancelled request gives the publish up, as without keep_waiting
                    outcome.add_done_callback(_retrieve)
                    raise
                if not done:
                    raise TimeoutError
                outcome.result()
            else:
                # asyncio.timeout, not wait_for: wait_for wraps every publish in a Task of its own.
                async with asyncio.timeout(timeout_s):
                    await confirm
        except TimeoutError as exc:
            self.metrics.publish_failures.labels("timeout").inc()
            raise ConfirmTimeout(
                f"The broker did not confirm the message within {timeout_s:g}s; "
                "it may or may not have been queued. Retry with the same MessageId.",
                retry_after_s=retry,
                outcome=outcome,
            ) from exc
        except BrokerUnavailable as exc:
            self.metrics.publish_failures.labels(_FAILURE_LABELS.get(exc.reason, "disconnected")).inc()
            if exc.reason == "broker_nack":
                self._renew_channel_soon()
            raise
        self.metrics.publish_duration.observe(time.perf_counter() - started)

    def _renew_channel_soon(self) -> None:
        """After a nack, publish on a new channel (at most once a second).

        RabbitMQ 3.10, found by the cluster drill: a channel that first publishes to a quorum
        queue while the queue elects a new leader (its leader's node died) nacks every later
        publish to it, for ever, although the queue is running again; a new channel publishes
        fine a second later. A nack is otherwise rare (the broker's own error), so a new
        channel costs nothing in normal operation.
        """
        if self._renewing is not None or time.monotonic() - self._renewed_at < 1.0:
            return
        self._renewing = asyncio.ensure_future(self._renew_channel())

    async def _renew_channel(self) -> None:
        conn, old = self.connection, self._channel
        try:
            if conn is None or conn.is_closed or not self.ready:
                return
            channel = conn.channel(publisher_confirms=True, on_return_raises=True)
            await channel.initialize(timeout=self.settings.broker.connect_timeout_s)
            exchange = await channel.get_exchange(self.names.exchange, ensure=False)
            if conn is not self.connection or old is not self._channel:  # a reconnect set up a new one meanwhile
                await channel.close()
                return
            self._channel, self._exchange = channel, exchange
            log.warning("publish channel renewed after a nack", extra={"event": "publish_channel_renewed"})
            if old is not None:  # closed once the publishes still waiting on it have had their time
                closing = asyncio.ensure_future(self._close_later(old))
                self._closing_channels.add(closing)
                closing.add_done_callback(self._closing_channels.discard)
        except _CONNECTION_ERRORS as exc:
            log.warning("could not renew the publish channel: %s", exc, extra={"event": "publish_channel_renew_failed"})
        finally:
            self._renewing, self._renewed_at = None, time.monotonic()

    async def _close_later(self, channel: AbstractChannel) -> None:
        await asyncio.sleep(self.settings.broker.confirm_timeout_s)
        with contextlib.suppress(Exception):
            await channel.close()

    # -- queue depths, for the gauges and the admin API -------------------------------------
    async def poll_depths(self, interval_s: float, after: Callable[[], None] | None = None) -> None:
        """Keep backlog/parked gauges fresh: one passive declare per queue per interval."""
        while True:
            # Blocked is a connection state: report it even when nothing is being published.
            self.metrics.broker_blocked.set(1 if self.blocked else 0)
            if self.ready:
                try:
                    self.depths = await self.queue_depths()
                except Exception as exc:  # a failed poll only leaves the gauges one interval older
                    log.debug("queue depth poll failed: %s", exc)
                for dest, (backlog, parked) in self.depths.items():
                    self.metrics.backlog.labels(dest).set(backlog)
                    self.metrics.parked.labels(dest).set(parked)
                if after is not None:
                    after()
            await asyncio.sleep(interval_s)

    async def queue_depths(self) -> dict[str, tuple[int, int]]:
        """{destination: (ready in queue, parked)} via passive declares: O(destinations), not O(backlog)."""
        if self.connection is None:
            return {}
        channel = await self.connection.channel()
        try:
            depths = {}
            for dest in self.settings.destinations:
                q = await channel.declare_queue(self.names.queue(dest.id), passive=True)
                p = await channel.declare_queue(self.names.parking(dest.id), passive=True)
                depths[dest.id] = (
                    q.declaration_result.message_count or 0,
                    p.declaration_result.message_count or 0,
                )
            return depths
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
