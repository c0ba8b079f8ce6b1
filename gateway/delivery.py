"""Per-destination delivery: consume, POST the original bytes, ack only when it is safe.

A message is acked only after the backend answered 2xx, or after it was parked with a
broker confirm. Every other path nacks it back to its queue (or leaves it unacked, which
the broker returns when the channel dies), so a crash at any point costs at most a
redelivery, never a message.

Outages: transient failures are retried in-worker with jittered backoff (retry.py) while
the circuit is closed. When the breaker opens, the worker cancels its consumer, returns
the few messages it holds (at most `concurrency`), and probes the backend every
`probe_interval_s`; the backlog stays in RabbitMQ, in order, visible as queue depth. No
message bounces between queue and worker during the outage, so a 14-hour outage costs each
message at most one redelivery, far from the queue's deliberate `x-delivery-limit`. A
successful probe half-opens the circuit: the consumer resumes and exactly one trial
message is sent; success closes the circuit and restarts the slow-start ramp (rate and
concurrency grow linearly to the destination's maximum over `slow_start_s`).

Each destination has its own channel, HTTP connection pool, breaker and limiter, so one
backend's outage never slows another.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from gateway.broker import Broker
from gateway.circuit import CircuitBreaker, CircuitState, RateLimiter, SlowStart
from gateway.config import Destination
from gateway.errors import BrokerUnavailable, PermanentDeliveryError, TransientDeliveryError
from gateway.messages import EXCERPT_MAX, Parking, QueuedMessage, iso, now_utc
from gateway.metrics import Metrics
from gateway.retry import classify, parse_retry_after, retrying

log = logging.getLogger("swgw.delivery")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    PARKED = "parked"
    REQUEUED = "requeued"


def _parse_iso(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _iso_unix(ts: float | None) -> str | None:
    return iso(datetime.fromtimestamp(ts, UTC)) if ts is not None else None


class DestinationWorker:
    """Consumes one destination's queue. Start once; stop() drains in-flight work within a bound."""

    def __init__(
        self,
        dest: Destination,
        broker: Broker,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dest = dest
        self.broker = broker
        self.metrics = metrics
        self.queue_name = broker.names.queue(dest.id)
        self.parking_name = broker.names.parking(dest.id)
        self.breaker = CircuitBreaker(
            failure_threshold=dest.failure_threshold, clock=clock, on_change=self._on_circuit_change
        )
        self.ramp = SlowStart(
            max_rate_per_s=dest.max_rate_per_s, max_concurrency=dest.concurrency, ramp_s=dest.slow_start_s, clock=clock
        )
        self.limiter = RateLimiter(self.ramp)
        self.paused = False
        self.delivered_total = 0
        self.parked_total = 0
        self.last_delivery_at: float | None = None  # unix time
        self.circuit_changed_at: float = time.time()
        self.stalled_head: float | None = None  # received_at of the oldest message returned on opening
        self._inflight: dict[int, float | None] = {}  # id(message) -> received_at (unix)
        self._slots = asyncio.Condition()
        self._active = 0  # deliveries holding a sending slot
        self._state_changed = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stopping = False
        self._consume_lock = asyncio.Lock()
        # Create every per-destination series at zero, so the first event after a restart
        # is visible to rate()/increase() (a series that appears at 1 counts as no change).
        for outcome in Outcome:
            metrics.deliveries.labels(dest.id, outcome.value)
        for counter in (metrics.delivery_attempts, metrics.delivery_retries, metrics.circuit_opened):
            counter.labels(dest.id)
        metrics.circuit_state.labels(dest.id).set(0)
        metrics.circuit_changed.labels(dest.id).set(self.circuit_changed_at)
        metrics.paused.labels(dest.id).set(0)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.dest.concurrency * 2, limit_per_host=self.dest.concurrency * 2)
        self._http = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._channel = await self.broker.new_channel(prefetch=self.dest.concurrency)
        self._queue = await self._channel.get_queue(self.queue_name, ensure=False)
        await self._consume()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages; let in-flight deliveries finish within `timeout_s`; ack nothing unfinished."""
        self._stopping = True
        await self._cancel_consumer()
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:  # unfinished: cancelled, never acked; the broker redelivers them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        if self._http is not None:
            await self._http.close()

    async def pause(self) -> None:
        self.paused = True
        self.metrics.paused.labels(self.dest.id).set(1)
        await self._cancel_consumer()
        log.info("destination paused", extra={"event": "paused", "destination": self.dest.id})

    async def resume(self) -> None:
        self.paused = False
        self.metrics.paused.labels(self.dest.id).set(0)
        if self.breaker.state is not CircuitState.OPEN:
            await self._consume()
        log.info("destination resumed", extra={"event": "resumed", "destination": self.dest.id})

    @property
    def state(self) -> str:
        return "paused" if self.paused else self.breaker.state.value

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_received_at(self) -> float | None:
        times = [t for t in self._inflight.values() if t is not None]
        if self.stalled_head is not None:
            times.append(self.stalled_head)
        return min(times) if times else None

    async def _consume(self) -> None:
        async with self._consume_lock:
            if self._consumer_tag is not None or self._queue is None or self._stopping or self.paused:
                return
            self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)

    async def _cancel_consumer(self) -> None:
        async with self._consume_lock:
            tag, self._consumer_tag = self._consumer_tag, None
            if tag is not None and self._queue is not None:
                with contextlib.suppress(Exception):
                    await self._queue.cancel(tag)

    # -- circuit -------------------------------------------------------------------------
    def _on_circuit_change(self, old: CircuitState, new: CircuitState) -> None:
        dest = self.dest.id
        self.circuit_changed_at = time.time()
        self.metrics.circuit_state.labels(dest).set(new.code)
        self.metrics.circuit_changed.labels(dest).set(self.circuit_changed_at)
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        if new is CircuitState.OPEN:
            self.metrics.circuit_opened.labels(dest).inc()
            log.warning(
                "circuit opened: backend unreachable or failing; holding messages in the queue",
                extra={"event": "circuit_open", "destination": dest, "state": new.value},
            )
            self._spawn(self._cancel_consumer())
            if self._probe_task is None or self._probe_task.done():
                self._probe_task = asyncio.create_task(self._probe_loop(), name=f"probe-{dest}")
        elif new is CircuitState.HALF_OPEN:
            log.info(
                "circuit half-open: probe answered; sending one trial message",
                extra={"event": "circuit_half_open", "destination": dest, "state": new.value},
            )
            self._spawn(self._consume())
        else:
            log.info(
                "circuit closed: backend recovered; draining with slow start",
                extra={"event": "circuit_closed", "destination": dest, "state": new.value},
            )
            self.ramp.restart()
            self.stalled_head = None
            self._spawn(self._consume())

    async def _probe_loop(self) -> None:
        assert self._http is not None
        while self.breaker.state is CircuitState.OPEN and not self._stopping:
            await asyncio.sleep(self.dest.probe_interval_s)
            try:
                async with self._http.get(
                    self.dest.probe_url, timeout=aiohttp.ClientTimeout(total=self.dest.timeout_s), allow_redirects=False
                ) as resp:
                    up = resp.status < 500
            except (aiohttp.ClientError, OSError, TimeoutError):
                up = False
            if up:
                self.breaker.probe_succeeded()

    # -- per message -------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._spawn(self._handle(message))

    async def _handle(self, raw: AbstractIncomingMessage) -> None:
        msg = QueuedMessage.from_amqp(raw)
        key = id(raw)
        received = _parse_iso(msg.received_at)  # once per message: age gauges, requeue head, e2e latency
        self._inflight[key] = received
        try:
            outcome = await self._deliver(msg, received)
        except asyncio.CancelledError:
            raise  # stop(): left unacked on purpose; the broker redelivers after the channel closes
        except Exception:
            # Unexpected (a bug, or parking failed): never ack. The quorum queue's delivery
            # limit bounds how often a poison message can come back before it is parked.
            log.exception(
                "delivery failed unexpectedly; returning message to the queue",
                extra=self._ctx(msg, "delivery_error"),
            )
            outcome = Outcome.REQUEUED
        finally:
            self._inflight.pop(key, None)
        try:
            if outcome is Outcome.REQUEUED:
                if self.breaker.state is not CircuitState.CLOSED:
                    # The cancel started when the circuit opened may still be in flight; finish it
                    # first, or the broker hands the message straight back to this consumer.
                    await self._cancel_consumer()
                if received is not None and (self.stalled_head is None or received < self.stalled_head):
                    self.stalled_head = received
                await raw.nack(requeue=True)
            else:
                await raw.ack()
        except Exception as exc:  # channel gone: the broker already returned the message
            log.warning(
                "could not settle message (%s); the broker will redeliver it",
                exc,
                extra=self._ctx(msg, "settle_failed"),
            )
        self.metrics.deliveries.labels(self.dest.id, outcome.value).inc()

    @contextlib.asynccontextmanager
    async def _sending_slot(self) -> AsyncIterator[None]:
        """Bound messages being worked on to the (ramping) concurrency; waiting ones hold no slot."""
        async with self._slots:
            await self._slots.wait_for(lambda: self._active < self.ramp.concurrency)
            self._active += 1
        try:
            yield
        finally:
            async with self._slots:
                self._active -= 1
                # Wake only as many waiters as there are free slots (the ramp may have grown):
                # notify_all woke all `prefetch` waiters per delivered message to re-check and sleep.
                self._slots.notify(max(1, self.ramp.concurrency - self._active))

    def _may_continue(self) -> bool:
        return self.breaker.state is CircuitState.CLOSED and not self._stopping

    async def _acquire_circuit(self) -> bool:
        """Wait for permission to send: True to send, False to hand the message back."""
        while True:
            if self._stopping:
                return False
            if self.breaker.try_acquire():
                return True
            if self.breaker.state is CircuitState.OPEN:
                return False
            await self._state_changed.wait()  # half-open with the trial taken: wait for its verdict

    async def _deliver(self, msg: QueuedMessage, received: float | None) -> Outcome:
        async with self._sending_slot():
            return await self._deliver_in_slot(msg, received)

    async def _deliver_in_slot(self, msg: QueuedMessage, received: float | None) -> Outcome:
        if not await self._acquire_circuit():
            return Outcome.REQUEUED
        attempts = [1]
        try:
            try:  # the first attempt needs no retry machinery (tenacity costs ~28 us per message)
                await self.limiter.acquire()
                await self._send(msg, 1)
            except TransientDeliveryError as first:
                await self._retry(msg, first, attempts)
        except PermanentDeliveryError as exc:
            await self._park(msg, "rejected", exc.status, exc.excerpt or str(exc), attempts[0])
            return Outcome.PARKED
        except TransientDeliveryError as exc:
            if attempts[0] >= self.dest.max_attempts and self.breaker.state is CircuitState.CLOSED:
                await self._park(msg, "max_attempts", exc.status, exc.excerpt or str(exc), attempts[0])
                return Outcome.PARKED
            return Outcome.REQUEUED
        self._delivered(received)
        log.info("delivered", extra=self._ctx(msg, "delivered", attempt=attempts[0]))
        return Outcome.DELIVERED

    async def _retry(self, msg: QueuedMessage, first: TransientDeliveryError, attempts: list[int]) -> None:
        """Attempts 2..max_attempts under the tenacity policy; raises the last failure.

        The first attempt's failure is replayed as tenacity's attempt 1, so waits, counting,
        stop conditions and the retry hook are exactly those of a loop that made every attempt.
        """
        replay: TransientDeliveryError | None = first
        async for attempt in retrying(
            self.dest, should_continue=self._may_continue, before_sleep=self._before_retry(msg)
        ):
            with attempt:
                if replay is not None:
                    failure, replay = replay, None
                    raise failure
                if not self._may_continue():  # opened while we slept: don't send
                    raise TransientDeliveryError("circuit opened; returning the message to its queue")
                attempts[0] += 1
                await self.limiter.acquire()
                await self._send(msg, attempts[0])

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

    def _before_retry(self, msg: QueuedMessage) -> Callable[[Any], None]:
        def hook(state: Any) -> None:
            self.metrics.delivery_retries.labels(self.dest.id).inc()
            log.info(
                "delivery failed, retrying in %.1fs: %s",
                state.upcoming_sleep,
                state.outcome.exception() if state.outcome else "",
                extra=self._ctx(msg, "retry", attempt=state.attempt_number),
            )

        return hook

    async def _send(self, msg: QueuedMessage, attempt: int) -> None:
        """One POST. Raises Transient/PermanentDeliveryError; reports to the breaker exactly once."""
        assert self._http is not None
        dest = self.dest
        self.metrics.delivery_attempts.labels(dest.id).inc()
        started = time.perf_counter()
        try:
            async with self._http.post(
                dest.url,
                data=msg.body,
                headers=msg.http_headers(attempt),
                timeout=aiohttp.ClientTimeout(total=dest.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                excerpt = (await resp.content.read(EXCERPT_MAX)).decode("utf-8", "replace")
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError as exc:
            self.breaker.record_failure()
            raise TransientDeliveryError(f"no answer within {dest.timeout_s:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.breaker.record_failure()
            raise TransientDeliveryError(f"connection failed: {exc}") from exc
        finally:
            self.metrics.backend_duration.labels(dest.id).observe(time.perf_counter() - started)
        kind = classify(status)
        if kind is TransientDeliveryError:
            self.breaker.record_failure()
            raise TransientDeliveryError(
                f"backend answered {status}",
                status=status,
                excerpt=excerpt,
                retry_after_s=parse_retry_after(retry_after, now=datetime.now(UTC)),
            )
        self.breaker.record_success()  # a permanent 4xx still proves the backend is up
        if kind is not None:
            raise PermanentDeliveryError(f"backend rejected the message with {status}", status=status, excerpt=excerpt)

    def _delivered(self, received: float | None) -> None:
        now = time.time()
        self.delivered_total += 1
        self.last_delivery_at = now
        self.metrics.last_delivery.labels(self.dest.id).set(now)
        if received is not None:
            self.metrics.end_to_end.labels(self.dest.id).observe(max(0.0, now - received))

    async def _park(self, msg: QueuedMessage, reason: str, status: int | None, excerpt: str, attempts: int) -> None:
        """Publish to parking with a confirm. Raises if not confirmed, so the caller never acks."""
        parking = Parking(
            reason=reason, status=status, excerpt=excerpt[:EXCERPT_MAX], attempts=attempts, parked_at=iso(now_utc())
        )
        try:
            await self.broker.publish_to_queue(self.parking_name, msg.parked(parking).to_amqp())
        except BrokerUnavailable:
            log.error(
                "parking failed; message stays in its queue",
                extra=self._ctx(msg, "park_failed"),
            )
            raise
        self.parked_total += 1
        log.warning(
            "message parked: %s (status %s)",
            reason,
            status,
            extra=self._ctx(msg, "parked", reason=reason, status=status),
        )


class Delivery:
    """All destination workers of this process; started when the broker first connects."""

    def __init__(self, destinations: tuple[Destination, ...], broker: Broker, metrics: Metrics) -> None:
        self.broker = broker
        self.workers = {d.id: DestinationWorker(d, broker, metrics) for d in destinations}
        self._started = False

    async def start(self) -> None:
        if self._started:
            return  # robust channels restore their consumers after a reconnect by themselves
        for worker in self.workers.values():
            await worker.start()
        self._started = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        await asyncio.gather(*(w.stop(timeout_s) for w in self.workers.values()))

    def states(self) -> dict[str, dict[str, Any]]:
        depths = self.broker.depths
        out: dict[str, dict[str, Any]] = {}
        for dest_id, w in self.workers.items():
            backlog, parked = depths.get(dest_id, (None, None))
            out[dest_id] = {
                "id": dest_id,
                "state": w.state,
                "circuit": w.breaker.state.value,
                "paused": w.paused,
                "backlog": backlog,
                "parked": parked,
                "inflight": w.inflight,
                "delivered_total": w.delivered_total,
                "parked_total": w.parked_total,
                "last_delivery_at": iso(datetime.fromtimestamp(w.last_delivery_at, UTC))
                if w.last_delivery_at
                else None,
                "circuit_changed_at": _iso_unix(w.circuit_changed_at),
                "rate_limit_per_s": round(w.ramp.rate, 1),
                "concurrency_limit": w.ramp.concurrency,
            }
        return out

    def update_age_gauges(self, metrics: Metrics) -> None:
        """Oldest undelivered message age: in-flight or held-back head; 0 when the queue is empty."""
        now = time.time()
        for dest_id, w in self.workers.items():
            oldest = w.oldest_received_at()
            backlog = self.broker.depths.get(dest_id, (0, 0))[0]
            if oldest is not None:
                metrics.oldest_age.labels(dest_id).set(max(0.0, now - oldest))
            elif backlog == 0 and w.inflight == 0:
                metrics.oldest_age.labels(dest_id).set(0)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Drain mode: wait until every queue is empty and nothing is in flight (True), or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            depths = await self.broker.queue_depths()
            if all(d[0] == 0 for d in depths.values()) and all(w.inflight == 0 for w in self.workers.values()):
                return True
            await asyncio.sleep(0.2)
        return False
