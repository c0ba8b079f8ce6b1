"""One destination's worker: consume, POST, and settle each message so that none is lost.

The worker is one supervised loop that *reconciles*: it opens a channel on the consumer
connection and, whenever anything changes (circuit, pause, parking, stop, a lost
channel), makes the broker's view match the wanted one: a consumer exactly while the
circuit is closed, nobody paused the destination and no park is stuck. When the channel
closes (broker restart, network blip, node failover), the loop starts over from nothing on
the next connection: new channel, new consumer. There is no consumer tag that can go
stale and no restore by the client library behind the worker's back.

What becomes of each message (delivered, parked, retried, handed back) is deliverer.py.

While the circuit is open the worker holds no message: no consumer, nothing prefetched.
It probes every `probe_interval_s`; while the probe answers healthy it keeps a consumer with
prefetch 1 registered, and the one message that consumer is sent is the half-open trial
(not `basic.get`: RabbitMQ refuses it on a queue with single active consumer). A failed trial is handed back (above) and
is not counted as an attempt, so an outage of any length, even behind a health check that
lies, costs each message nothing but trials that fail, never a delivery-limit count.

Several replicas: every destination queue has single active consumer (topology.py), so each
replica's worker registers a consumer (tag `swgw.<replica_id>.<destination>.<n>`) and only
one is sent messages; when it goes (crash, lost node, cancel) RabbitMQ makes the next one
active. An open circuit cancels the consumer as above, which hands the queue to the next
replica: that one meets the same outage and opens its own circuit after
`failure_threshold` failures, which the deliverer hands back (never a delivery-limit count).
This rotation is deliberate: an outage costs at most `failure_threshold` failed POSTs per
replica, and keeping the registration while open would mean holding prefetched messages
in a replica that cannot deliver them. The first replica whose half-open trial succeeds
consumes again and, the others being open or waiting, takes the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from gateway.broker.publisher import Broker
from gateway.delivery.circuit import CircuitBreaker, CircuitState, SlowStart
from gateway.delivery.connection import ConsumerConnection
from gateway.delivery.deliverer import CHANNEL_ERRORS as _CHANNEL_ERRORS
from gateway.delivery.deliverer import Deliverer
from gateway.delivery.journaling import DeliveryJournal
from gateway.delivery.parking import Parker
from gateway.delivery.sender import Sender
from gateway.journal.model import JournalWriter
from gateway.journal.writer import NullWriter
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination
from gateway.supervise import spawn_supervised

log = logging.getLogger("swgw.delivery")


class DestinationWorker:
    """Delivers one destination's queue. `start()` once; `stop()` drains in-flight work within a bound.

    `journal` gets every attempt, settlement and circuit change (journaling.py); None: journal off.
    """

    def __init__(
        self,
        dest: Destination,
        broker: Broker,
        connection: ConsumerConnection,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        journal: JournalWriter | None = None,
    ) -> None:
        self.dest = dest
        self.journal = DeliveryJournal(journal if journal is not None else NullWriter(), dest.id)
        self.broker = broker
        self.connection = connection
        self.metrics = metrics
        self.queue_name = broker.names.queue(dest.id)
        self.breaker = CircuitBreaker(failure_threshold=dest.failure_threshold, on_change=self._on_circuit_change)
        self.ramp = SlowStart(
            max_rate_per_s=dest.max_rate_per_s, max_concurrency=dest.concurrency, ramp_s=dest.slow_start_s, clock=clock
        )
        self.sender = Sender(dest, metrics)
        self.parker = Parker(dest, broker, metrics, on_stuck=self._on_stuck)
        self.paused = False
        self.circuit_changed_at = time.time()
        self._stuck = 0  # messages held because parking them failed
        self.deliverer = Deliverer(
            dest, broker, metrics, breaker=self.breaker, ramp=self.ramp, sender=self.sender, parker=self.parker,
            may_send=self._may_send, why_not=self._why_not, stopping=lambda: self._stopping, journal=self.journal,
        )  # fmt: skip
        self._wake = asyncio.Event()
        self._consume_lock = asyncio.Lock()
        self._queue: AbstractQueue | None = None
        self._channel: AbstractChannel | None = None
        self._trial_tag: str | None = None  # the prefetch-1 consumer that takes the half-open trial
        self._trial_wanted = False  # OPEN and the last probe answered healthy
        self._consumer_tag: str | None = None
        self._registrations = 0  # consumers registered so far: the last part of the consumer tag
        self.active_since: float | None = None  # unix time this consumer's first message came (SAC: active)
        self._tasks: set[asyncio.Task[None]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._topology_seen = False
        d = dest.id
        for reason in ("circuit", "trial_failed", "paused", "parking_stuck"):
            metrics.returned.labels(d, reason)
        for counter in (metrics.delivery_attempts, metrics.delivery_retries, metrics.circuit_opened):
            counter.labels(d)
        metrics.circuit_state.labels(d).set(0)
        metrics.circuit_changed.labels(d).set(self.circuit_changed_at)
        metrics.paused.labels(d).set(0)
        metrics.consuming.labels(d).set(0)
        metrics.active.labels(d).set(0)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.sender.start()
        self._run_task = spawn_supervised(f"delivery-{self.dest.id}", self._run, self.metrics.task_restarts)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Take no new messages; let in-flight deliveries finish within `timeout_s`; ack nothing unfinished."""
        self._stopping = True
        self._wake.set()
        await self._cancel_consumer()
        await self.deliverer.notify_slots()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:  # unfinished: cancelled, never acked; the broker redelivers them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
        await self.sender.close()

    async def pause(self) -> None:
        self.paused = True
        self.metrics.paused.labels(self.dest.id).set(1)
        await self._cancel_consumer()
        self._changed()
        log.info("destination paused", extra={"event": "paused", "destination": self.dest.id})

    async def resume(self) -> None:
        self.paused = False
        self.metrics.paused.labels(self.dest.id).set(0)
        self._changed()
        log.info("destination resumed", extra={"event": "resumed", "destination": self.dest.id})

    @property
    def consuming(self) -> bool:
        return self._consumer_tag is not None

    @property
    def consumer_tag(self) -> str | None:
        return self._consumer_tag

    @property
    def active(self) -> bool:
        """This replica's consumer is the queue's single active one: it has been sent messages.

        RabbitMQ tells a consumer nothing when it becomes active, so a consumer knows it only
        once the first message arrives: on an idle queue the active consumer and a waiting
        one both say False (docs/operations.md, Running several replicas).
        """
        return self._consumer_tag is not None and self.active_since is not None

    @property
    def state(self) -> str:
        if self.paused:
            return "paused"
        if self._stuck:
            return "parking_stuck"
        if self.breaker.state is CircuitState.CLOSED and not self.consuming and not self._stopping:
            return "disconnected" if not self.connection.up else "starting"
        return self.breaker.state.value

    @property
    def parked_total(self) -> int:
        return self.parker.parked_total

    @property
    def delivered_total(self) -> int:
        return self.deliverer.delivered_total

    @property
    def last_delivery_at(self) -> float | None:
        return self.deliverer.last_delivery_at

    @property
    def inflight(self) -> int:
        return self.deliverer.inflight

    def oldest_received_at(self) -> float | None:
        return self.deliverer.oldest_received_at()

    # -- the reconcile loop -------------------------------------------------------------------
    def _wants_consumer(self) -> bool:
        return self.breaker.state is CircuitState.CLOSED and not self.paused and not self._stuck and not self._stopping

    def _changed(self) -> None:
        self._wake.set()
        self._spawn(self.deliverer.notify_slots())

    async def _run(self) -> None:
        """For the process lifetime: a channel per connection, and the consumer kept as wanted."""
        if not self._topology_seen:  # the publisher side declares the queues; wait for that once
            await self.broker.connected.wait()
            self._topology_seen = True
        while not self._stopping:
            await self.connection.wait_up()
            if self.connection.closing:
                return
            if self._stopping or not self.connection.up:
                continue
            try:
                channel = await self.connection.channel(prefetch=self.dest.concurrency)
            except _CHANNEL_ERRORS as exc:
                log.warning(
                    "delivery channel failed: %s", exc, extra={"event": "channel_failed", "destination": self.dest.id}
                )
                await asyncio.sleep(self.broker.settings.broker.reconnect_interval_s)
                continue
            try:
                await self._session(channel)
            except _CHANNEL_ERRORS as exc:  # the channel or connection died under us: start over
                log.warning(
                    "delivery channel lost: %s", exc, extra={"event": "channel_lost", "destination": self.dest.id}
                )
            finally:
                self._forget_consumer()
                with contextlib.suppress(Exception):
                    await channel.close()
            if not self._stopping:
                await asyncio.sleep(self.broker.settings.broker.reconnect_interval_s)

    async def _session(self, channel: AbstractChannel) -> None:
        """Until the channel closes: keep the consumer as wanted, probe while open.

        It does not end when the worker stops: in-flight deliveries still need the channel to
        ack on, and `stop()` cancels this loop only after they have finished.
        """
        self._queue = await channel.declare_queue(self.queue_name, passive=True)
        self._channel = channel
        closed = asyncio.ensure_future(channel.closed())
        try:
            while True:
                self._wake.clear()
                await self._reconcile()
                timeout = self.dest.probe_interval_s if self.breaker.state is CircuitState.OPEN else None
                woken = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({woken, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if closed in done or channel.is_closed:
                    log.warning(
                        "delivery channel closed; reopening",
                        extra={"event": "channel_closed", "destination": self.dest.id},
                    )
                    return
                if not done and self.breaker.state is CircuitState.OPEN and not self.paused and not self._stopping:
                    await self._probe_and_trial()
        finally:
            closed.cancel()

    async def _reconcile(self) -> None:
        async with self._consume_lock:
            queue, channel = self._queue, self._channel
            if queue is None or channel is None:
                return
            wants_trial = self._trial_wanted and not self._wants_consumer() and self._may_try()
            if not wants_trial and self._trial_tag is not None:
                await self._cancel_locked("_trial_tag")
            if self._wants_consumer() and self._consumer_tag is None:
                await channel.set_qos(prefetch_count=self.dest.concurrency)  # qos binds consumers made after it
                self._consumer_tag = await queue.consume(self._on_message, no_ack=False, consumer_tag=self._tag())
                self.metrics.consuming.labels(self.dest.id).set(1)
                log.info("consuming", extra={"event": "consuming", "destination": self.dest.id})
            elif not self._wants_consumer() and self._consumer_tag is not None:
                await self._cancel_consumer_locked()
            if wants_trial and self._trial_tag is None:
                await channel.set_qos(prefetch_count=1)
                self._trial_tag = await queue.consume(self._on_trial, no_ack=False, consumer_tag=self._tag("trial"))

    def _tag(self, kind: str = "") -> str:
        self._registrations += 1
        replica = self.broker.settings.broker.replica_id
        return f"swgw.{replica}.{self.dest.id}.{kind}{self._registrations}"

    async def _cancel_consumer(self) -> None:
        async with self._consume_lock:
            await self._cancel_consumer_locked()
            await self._cancel_locked("_trial_tag")

    async def _cancel_consumer_locked(self) -> None:
        self.active_since = None
        self.metrics.consuming.labels(self.dest.id).set(0)
        self.metrics.active.labels(self.dest.id).set(0)
        await self._cancel_locked("_consumer_tag")

    async def _cancel_locked(self, attr: str) -> None:
        tag = getattr(self, attr)
        setattr(self, attr, None)
        if tag is not None and self._queue is not None:
            with contextlib.suppress(*_CHANNEL_ERRORS):  # a dead channel has no consumer left to cancel
                await self._queue.cancel(tag)

    def _forget_consumer(self) -> None:
        self._consumer_tag, self._trial_tag, self._queue, self._channel = None, None, None, None
        self.active_since = None
        self.metrics.consuming.labels(self.dest.id).set(0)
        self.metrics.active.labels(self.dest.id).set(0)

    # -- circuit -------------------------------------------------------------------------------
    def _on_circuit_change(self, old: CircuitState, new: CircuitState) -> None:
        dest = self.dest.id
        if new is not CircuitState.HALF_OPEN:
            self._trial_wanted = False  # closed: the real consumer takes over; re-opened: probe again first
        self.circuit_changed_at = time.time()
        self.journal.circuit(new.value, self.circuit_changed_at)  # outages get a start and an end
        self.metrics.circuit_state.labels(dest).set(new.code)
        self.metrics.circuit_changed.labels(dest).set(self.circuit_changed_at)
        if new is CircuitState.OPEN:
            # A failed trial re-opens every probe interval for the whole outage: one warning
            # when the outage starts, info lines after that.
            first = old is CircuitState.CLOSED
            if first:
                self.metrics.circuit_opened.labels(dest).inc()
            log.log(
                logging.WARNING if first else logging.INFO,
                "circuit opened: backend unreachable or failing; holding messages in the queue",
                extra={"event": "circuit_open", "destination": dest, "state": new.value},
            )
        elif new is CircuitState.HALF_OPEN:
            log.info(
                "circuit half-open: probe answered; sending one trial message",
                extra={"event": "circuit_half_open", "destination": dest, "state": new.value},
            )
        else:
            log.info(
                "circuit closed: backend recovered; draining with slow start",
                extra={"event": "circuit_closed", "destination": dest, "state": new.value},
            )
            self.ramp.restart()
            self.deliverer.stalled_head = None
        self._changed()

    async def _probe_and_trial(self) -> None:
        """OPEN: ask the health URL; while it answers healthy a prefetch-1 consumer waits for the trial.

        Not basic.get: RabbitMQ refuses it on a quorum queue with single active consumer. The
        trial consumer is one more SAC registration: it gets a message only when no other
        replica's consumer is active, and that one message is the half-open trial.
        """
        healthy = await self.sender.probe()
        self._trial_wanted = healthy and self.breaker.state is CircuitState.OPEN

    def _may_try(self) -> bool:
        return (
            self.breaker.state is not CircuitState.CLOSED and not self.paused and not self._stuck and not self._stopping
        )

    async def _on_trial(self, raw: AbstractIncomingMessage) -> None:
        if self.breaker.state is CircuitState.CLOSED:
            # sent after a successful trial, before the trial consumer was cancelled: deliver it
            self._spawn(self.deliverer.handle(raw))
            return
        if self.breaker.state is not CircuitState.OPEN or not self._trial_wanted or not self._may_try():
            # a message that came before the trial consumer was cancelled: back to the tail, free
            self._spawn(self._hand_back_quietly(raw))
            return
        self.breaker.probe_succeeded()
        if not self.breaker.try_acquire():
            self._spawn(self._hand_back_quietly(raw))
            return
        self._spawn(self.deliverer.handle(raw, trial=True))

    async def _hand_back_quietly(self, raw: AbstractIncomingMessage) -> None:
        await self.deliverer.hand_back(raw, QueuedMessage.from_amqp(raw), "trial_failed")

    # -- per message -----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self.active_since is None and message.consumer_tag == self._consumer_tag:
            self.active_since = time.time()  # with SAC, only the active consumer is sent anything
            self.metrics.active.labels(self.dest.id).set(1)
        self._spawn(self.deliverer.handle(message))

    def _on_stuck(self, delta: int) -> None:
        self._stuck += delta
        self.metrics.parking_stuck.labels(self.dest.id).set(1 if self._stuck else 0)
        self._changed()

    def _may_send(self) -> bool:
        return self.breaker.state is CircuitState.CLOSED and not self.paused and not self._stuck and not self._stopping

    def _why_not(self) -> str:
        if self.paused:
            return "paused"
        if self._stuck:
            return "parking_stuck"
        return "circuit"

    # -- settling --------------------------------------------------------------------------------
