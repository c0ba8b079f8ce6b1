"""One destination's worker: consume, POST, and settle each message so that none is lost.

The worker is one supervised loop that *reconciles*: it opens a channel on the consumer
connection and, whenever anything changes (circuit, pause, parking, stop, a lost
channel), makes the broker's view match the wanted one: a consumer exactly while the
circuit is closed, nobody paused the destination and no park is stuck. When the channel
closes (broker restart, network blip, node failover), the loop starts over from nothing on
the next connection: new channel, new consumer. There is no consumer tag that can go
stale and no restore by the client library behind the worker's back.

How a message ends, and what it costs:
- delivered (2xx): acked.
- rejected (other 4xx, 1xx, 3xx): parked with reason `rejected`, then acked (parking.py).
- failing (refused, timeout, 5xx, 408, 429): retried in place with backoff while the
  circuit is closed. Attempts are counted across redeliveries in the `x-swgw-attempts`
  header. A message that has used `max_attempts` is parked with reason `max_attempts`
  whatever the circuit state when the backend is evidently up: another message got through
  while it was failing, or the health probe answers healthy (a poison message). Only when
  neither holds are its failures the outage's: the circuit opens and it waits in the queue.
- handed back (the circuit opened, the destination was paused, parking is stuck): the
  message is republished to the tail of its queue with a confirm and then acked, never
  nack-requeued. A requeue counts against the quorum queue's `x-delivery-limit` (RabbitMQ
  3.x and 4.0 count every return), so an outage that opened the circuit a thousand times
  would dead-letter messages that were never even POSTed; a republish costs nothing. Only
  when the republish itself fails (broker trouble) does the worker fall back to a requeue.
  Price: a handed-back message moves behind the backlog (at most `concurrency` messages
  per opening).

While the circuit is open the worker holds no message: no consumer, nothing prefetched.
It probes every `probe_interval_s`; when the probe answers healthy it takes exactly one
message with `basic.get` as the half-open trial. A failed trial is handed back (above) and
is not counted as an attempt, so an outage of any length, even behind a health check that
lies, costs each message nothing but trials that fail, never a delivery-limit count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from gateway.broker.publisher import Broker
from gateway.delivery.circuit import CircuitBreaker, CircuitState, RateLimiter, SlowStart
from gateway.delivery.connection import ConsumerConnection
from gateway.delivery.parking import Parker
from gateway.delivery.retry import retrying
from gateway.delivery.sender import Sender
from gateway.errors import BrokerUnavailable, PermanentDeliveryError, TransientDeliveryError
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.config import Destination
from gateway.supervise import spawn_supervised

log = logging.getLogger("swgw.delivery")

_CHANNEL_ERRORS = (ConnectionError, OSError, RuntimeError, aiormq.exceptions.AMQPError, BrokerUnavailable)
OUTCOMES = ("delivered", "parked", "returned", "requeued")


def _parse_iso(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class DestinationWorker:
    """Delivers one destination's queue. `start()` once; `stop()` drains in-flight work within a bound."""

    def __init__(
        self,
        dest: Destination,
        broker: Broker,
        connection: ConsumerConnection,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dest = dest
        self.broker = broker
        self.connection = connection
        self.metrics = metrics
        self.queue_name = broker.names.queue(dest.id)
        self.breaker = CircuitBreaker(
            failure_threshold=dest.failure_threshold, clock=clock, on_change=self._on_circuit_change
        )
        self.ramp = SlowStart(
            max_rate_per_s=dest.max_rate_per_s, max_concurrency=dest.concurrency, ramp_s=dest.slow_start_s, clock=clock
        )
        self.limiter = RateLimiter(self.ramp)
        self.sender = Sender(dest, metrics)
        self.parker = Parker(dest, broker, metrics, on_stuck=self._on_stuck)
        self.paused = False
        self.delivered_total = 0
        self.last_delivery_at: float | None = None  # unix time
        self.circuit_changed_at = time.time()
        self.stalled_head: float | None = None  # received_at of the oldest message handed back
        self._successes = 0  # 2xx answers, for telling a poison message from an outage
        self._stuck = 0  # messages held because parking them failed
        self._inflight: dict[int, float | None] = {}  # id(message) -> received_at (unix)
        self._slots = asyncio.Condition()
        self._active = 0
        self._wake = asyncio.Event()
        self._consume_lock = asyncio.Lock()
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._topology_seen = False
        d = dest.id
        for outcome in OUTCOMES:
            metrics.deliveries.labels(d, outcome)
        for reason in ("circuit", "trial_failed", "paused", "parking_stuck"):
            metrics.returned.labels(d, reason)
        for counter in (metrics.delivery_attempts, metrics.delivery_retries, metrics.circuit_opened):
            counter.labels(d)
        metrics.circuit_state.labels(d).set(0)
        metrics.circuit_changed.labels(d).set(self.circuit_changed_at)
        metrics.paused.labels(d).set(0)
        metrics.consuming.labels(d).set(0)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.sender.start()
        self._run_task = spawn_supervised(f"delivery-{self.dest.id}", self._run, self.metrics.task_restarts)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Take no new messages; let in-flight deliveries finish within `timeout_s`; ack nothing unfinished."""
        self._stopping = True
        self._wake.set()
        await self._cancel_consumer()
        await self._notify_slots()
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
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_received_at(self) -> float | None:
        times = [t for t in self._inflight.values() if t is not None]
        if self.stalled_head is not None:
            times.append(self.stalled_head)
        return min(times) if times else None

    # -- the reconcile loop -------------------------------------------------------------------
    def _wants_consumer(self) -> bool:
        return self.breaker.state is CircuitState.CLOSED and not self.paused and not self._stuck and not self._stopping

    def _changed(self) -> None:
        self._wake.set()
        self._spawn(self._notify_slots())

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
            queue = self._queue
            if self._wants_consumer() and self._consumer_tag is None and queue is not None:
                self._consumer_tag = await queue.consume(self._on_message, no_ack=False)
                self.metrics.consuming.labels(self.dest.id).set(1)
                log.info("consuming", extra={"event": "consuming", "destination": self.dest.id})
            elif not self._wants_consumer() and self._consumer_tag is not None:
                await self._cancel_consumer_locked()

    async def _cancel_consumer(self) -> None:
        async with self._consume_lock:
            await self._cancel_consumer_locked()

    async def _cancel_consumer_locked(self) -> None:
        tag, self._consumer_tag = self._consumer_tag, None
        self.metrics.consuming.labels(self.dest.id).set(0)
        if tag is not None and self._queue is not None:
            with contextlib.suppress(*_CHANNEL_ERRORS):  # a dead channel has no consumer left to cancel
                await self._queue.cancel(tag)

    def _forget_consumer(self) -> None:
        self._consumer_tag, self._queue = None, None
        self.metrics.consuming.labels(self.dest.id).set(0)

    # -- circuit -------------------------------------------------------------------------------
    def _on_circuit_change(self, old: CircuitState, new: CircuitState) -> None:
        dest = self.dest.id
        self.circuit_changed_at = time.time()
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
            self.stalled_head = None
        self._changed()

    async def _probe_and_trial(self) -> None:
        """OPEN: ask the health URL; if healthy, one message by basic.get is the half-open trial."""
        if not await self.sender.probe() or self.breaker.state is not CircuitState.OPEN or self._queue is None:
            return
        raw = await self._queue.get(no_ack=False, fail=False)
        if raw is None:
            return  # nothing to try: stay open, so a lying health check cannot close the circuit
        self.breaker.probe_succeeded()
        if not self.breaker.try_acquire():
            await self._hand_back(raw, QueuedMessage.from_amqp(raw), "trial_failed")
            return
        self._spawn(self._handle(raw, trial=True))

    # -- per message -----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._spawn(self._handle(message))

    def _on_stuck(self, delta: int) -> None:
        self._stuck += delta
        self.metrics.parking_stuck.labels(self.dest.id).set(1 if self._stuck else 0)
        self._changed()

    async def _notify_slots(self) -> None:
        async with self._slots:
            self._slots.notify_all()

    def _may_send(self) -> bool:
        return self.breaker.state is CircuitState.CLOSED and not self.paused and not self._stuck and not self._stopping

    @contextlib.asynccontextmanager
    async def _sending_slot(self) -> AsyncIterator[None]:
        """Bound sends to the ramping concurrency; a held message also wakes when it must go back."""
        async with self._slots:
            await self._slots.wait_for(lambda: self._active < self.ramp.concurrency or not self._may_send())
            self._active += 1
        try:
            yield
        finally:
            async with self._slots:
                self._active -= 1
                self._slots.notify(max(1, self.ramp.concurrency - self._active))

    async def _handle(self, raw: AbstractIncomingMessage, *, trial: bool = False) -> None:
        msg = QueuedMessage.from_amqp(raw)
        key = id(raw)
        received = _parse_iso(msg.received_at)
        self._inflight[key] = received
        outcome: str | None
        try:
            if trial:
                outcome = await self._deliver_trial(raw, msg)
            else:
                async with self._sending_slot():
                    outcome = await self._deliver(raw, msg)
        except Exception:
            # A bug, not a backend answer. Requeue: this is what the quorum queue's delivery
            # limit is for. A message that keeps crashing the worker ends dead-lettered in
            # parking (x-death), instead of looping for ever or being lost.
            log.exception(
                "delivery failed unexpectedly; requeueing the message", extra=self._ctx(msg, "delivery_error")
            )
            self.metrics.task_restarts.labels("delivery-message").inc()
            with contextlib.suppress(*_CHANNEL_ERRORS):
                await raw.nack(requeue=True)
            outcome = "requeued"
        finally:
            self._inflight.pop(key, None)
        if outcome == "delivered":
            self._delivered(received)
        elif (
            outcome in ("returned", "requeued")
            and received is not None
            and (self.stalled_head is None or received < self.stalled_head)
        ):
            self.stalled_head = received
        if outcome is not None:
            self.metrics.deliveries.labels(self.dest.id, outcome).inc()

    async def _deliver(self, raw: AbstractIncomingMessage, msg: QueuedMessage) -> str | None:
        if not self._may_send():
            if self._stopping:
                return None  # left unacked: the broker returns it when the channel closes
            return await self._hand_back(raw, msg, self._why_not())
        successes_before = self._successes
        attempts = [msg.attempts]
        try:
            await self._attempts(msg, attempts)
        except PermanentDeliveryError as exc:
            return await self._park(raw, msg, "rejected", exc, attempts[0])
        except TransientDeliveryError as exc:
            if attempts[0] >= self.dest.max_attempts:
                # Poison or outage? Others got through while this one failed, or the backend's
                # health check says it is up: the fault is this message's. Otherwise the
                # backend is down for everyone: open the circuit and let the message wait.
                if self._successes > successes_before or await self.sender.probe():
                    return await self._park(raw, msg, "max_attempts", exc, attempts[0])
                self.breaker.force_open()
            if self._stopping:
                return None
            return await self._hand_back(raw, msg.with_attempts(attempts[0]), self._why_not())
        return await self._ack(raw, msg, "delivered", attempt=attempts[0])

    async def _attempts(self, msg: QueuedMessage, attempts: list[int]) -> None:
        """POST until success, a permanent answer, `max_attempts` in all, or the circuit leaves CLOSED."""
        try:
            await self._post(msg, attempts)  # the first try needs no retry machinery
            return
        except TransientDeliveryError as first:
            if attempts[0] >= self.dest.max_attempts or not self._may_send():
                raise
            replay: TransientDeliveryError | None = first
        budget = replace(self.dest, max_attempts=self.dest.max_attempts - attempts[0] + 1)
        async for attempt in retrying(budget, should_continue=self._may_send, before_sleep=self._before_retry(msg)):
            with attempt:
                if replay is not None:  # tenacity's attempt 1 is the failure we already had
                    failure, replay = replay, None
                    raise failure
                if not self._may_send():
                    raise TransientDeliveryError("circuit opened; handing the message back to its queue")
                await self._post(msg, attempts)

    async def _post(self, msg: QueuedMessage, attempts: list[int]) -> None:
        await self.limiter.acquire()
        attempts[0] += 1
        try:
            await self.sender.send(msg, attempts[0])
        except TransientDeliveryError:
            self.breaker.record_failure(msg.message_id)
            raise
        self.breaker.record_success()  # a permanent 4xx also proves the backend is up
        self._successes += 1

    async def _deliver_trial(self, raw: AbstractIncomingMessage, msg: QueuedMessage) -> str | None:
        """The half-open trial: one POST; its answer decides the circuit; a failure costs the message nothing."""
        try:
            await self.sender.send(msg, msg.attempts + 1)
        except PermanentDeliveryError as exc:
            self.breaker.record_success()
            return await self._park(raw, msg, "rejected", exc, msg.attempts + 1)
        except TransientDeliveryError as exc:
            self.breaker.record_failure()
            log.info("trial delivery failed: %s; circuit stays open", exc, extra=self._ctx(msg, "trial_failed"))
            return await self._hand_back(raw, msg, "trial_failed")
        except BaseException:
            self.breaker.record_failure()  # an abandoned trial must not leave the circuit half-open
            raise
        self.breaker.record_success()
        self._successes += 1
        return await self._ack(raw, msg, "delivered", attempt=msg.attempts + 1)

    def _why_not(self) -> str:
        if self.paused:
            return "paused"
        if self._stuck:
            return "parking_stuck"
        return "circuit"

    # -- settling --------------------------------------------------------------------------------
    @staticmethod
    def _held(raw: AbstractIncomingMessage) -> bool:
        """Still ours to settle: its channel is open (else the broker has already taken it back)."""
        return not raw.channel.is_closed

    async def _ack(self, raw: AbstractIncomingMessage, msg: QueuedMessage, outcome: str, **more: object) -> str:
        try:
            await raw.ack()
        except _CHANNEL_ERRORS as exc:  # channel gone: the broker already returned it; it comes back once more
            log.warning("could not ack (%s); the broker will redeliver it", exc, extra=self._ctx(msg, "ack_failed"))
        if outcome == "delivered":
            log.info("delivered", extra=self._ctx(msg, "delivered", **more))
        return outcome

    async def _hand_back(self, raw: AbstractIncomingMessage, msg: QueuedMessage, reason: str) -> str | None:
        """Republish to the tail of the queue with a confirm, then ack: spends no delivery count."""
        if not self._held(raw):
            return None  # the broker has it already
        try:
            await self.broker.publish_to_queue(self.queue_name, msg.to_amqp())
        except BrokerUnavailable as exc:
            log.warning(
                "could not hand the message back by republishing (%s); requeueing it",
                exc,
                extra=self._ctx(msg, "requeue"),
            )
            with contextlib.suppress(*_CHANNEL_ERRORS):
                await raw.nack(requeue=True)
            return "requeued"
        self.metrics.returned.labels(self.dest.id, reason).inc()
        await self._ack(raw, msg, "returned")
        return "returned"

    async def _park(
        self,
        raw: AbstractIncomingMessage,
        msg: QueuedMessage,
        reason: str,
        exc: TransientDeliveryError | PermanentDeliveryError,
        attempts: int,
    ) -> str | None:
        parked = await self.parker.park(
            msg, reason=reason, status=exc.status, excerpt=exc.excerpt or str(exc), attempts=attempts,
            held=lambda: self._held(raw) and not self._stopping,
        )  # fmt: skip
        if not parked:
            return None
        return await self._ack(raw, msg, "parked")

    def _delivered(self, received: float | None) -> None:
        now = time.time()
        self.delivered_total += 1
        self.last_delivery_at = now
        self.metrics.last_delivery.labels(self.dest.id).set(now)
        if received is not None:
            self.metrics.end_to_end.labels(self.dest.id).observe(max(0.0, now - received))

    def _ctx(self, msg: QueuedMessage, event: str, **more: object) -> dict[str, object]:
        """Log context every message event carries (never the body)."""
        return {
            "event": event,
            "message_id": msg.message_id,
            "partner": msg.partner,
            "message_type": msg.message_type,
            "destination": self.dest.id,
            **more,
        }

    def _before_retry(self, msg: QueuedMessage) -> Callable[[object], None]:
        def hook(state: object) -> None:
            self.metrics.delivery_retries.labels(self.dest.id).inc()
            outcome = getattr(state, "outcome", None)
            log.info(
                "delivery failed, retrying in %.1fs: %s",
                getattr(state, "upcoming_sleep", 0.0),
                outcome.exception() if outcome else "",
                extra=self._ctx(msg, "retry", attempt=getattr(state, "attempt_number", 0)),
            )

        return hook
