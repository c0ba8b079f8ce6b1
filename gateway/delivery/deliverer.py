"""What happens to one message: send it, retry it, and settle it so that none is lost.

The worker (worker.py) decides *whether* messages flow (consumer, circuit, pause); this
module decides what becomes of each one it is handed:
- delivered (2xx): acked.
- rejected (other 4xx, 1xx, 3xx): parked with reason `rejected`, then acked (parking.py).
- failing (refused, timeout, 5xx, 408, 429): retried in place with backoff while sending is
  allowed. Attempts are counted across redeliveries in the `x-swgw-attempts` header, except
  those of a delivery the circuit opened on (the outage's, not the message's). A
  message that has used `max_attempts` is parked with reason `max_attempts` whatever the
  circuit state when the backend is evidently up: another message got through while it was
  failing, or the health probe answers healthy (a poison message). Only when neither holds
  are its failures the outage's: the circuit opens and it waits in the queue.
- handed back (the circuit opened, the destination was paused, parking is stuck): the
  message is republished to the tail of its queue with a confirm and then acked, never
  nack-requeued. A requeue counts against the quorum queue's `x-delivery-limit` (RabbitMQ
  3.x and 4.0 count every return), so an outage that opened the circuit a thousand times
  would dead-letter messages that were never even POSTed; a republish costs nothing. Only
  when the republish itself fails (broker trouble) does it fall back to a requeue. Price: a
  handed-back message moves behind the backlog (at most `concurrency` per opening).
- the half-open trial: one POST whose answer decides the circuit; a failed trial is handed
  back and does not count as an attempt.
- a bug (anything else raised): requeued, which is what the quorum queue's delivery limit
  is for: a message that keeps crashing the worker ends dead-lettered in parking.

Every POST is journaled as an attempt, and every ack is preceded by its journal event
(`_settle`); what a crash between the two leaves is journaling.py's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from gateway.broker.publisher import Broker
from gateway.delivery.circuit import CircuitBreaker, CircuitState, RateLimiter, SlowStart
from gateway.delivery.journaling import DeliveryJournal, dead_letters
from gateway.delivery.parking import Parker
from gateway.delivery.retry import retrying
from gateway.delivery.sender import Answer, Sender
from gateway.errors import BrokerUnavailable, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from gateway.journal.model import EventKind
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination
from gateway.timeutil import unix_or_none

log = logging.getLogger("swgw.delivery")

CHANNEL_ERRORS = (ConnectionError, OSError, RuntimeError, aiormq.exceptions.AMQPError, BrokerUnavailable)
OUTCOMES = ("delivered", "parked", "returned", "requeued")


class Deliverer:
    """Sends and settles the messages of one destination; its worker says when sending is allowed.

    Parameters:
        may_send: True while new POSTs may start (circuit closed, not paused, no stuck park,
            not stopping); held messages go back to the queue when it turns False.
        why_not: the reason a message is handed back (`circuit`, `paused`, `parking_stuck`),
            a label of `swgw_delivery_returned_total`.
        stopping: True once the worker stops: unfinished messages are then left unacked for
            the broker to return, not republished on a closing connection.
        journal: where attempts and settlements are journaled (journaling.py).
    """

    def __init__(
        self,
        dest: Destination,
        broker: Broker,
        metrics: Metrics,
        *,
        breaker: CircuitBreaker,
        ramp: SlowStart,
        sender: Sender,
        parker: Parker,
        may_send: Callable[[], bool],
        why_not: Callable[[], str],
        stopping: Callable[[], bool],
        journal: DeliveryJournal,
    ) -> None:
        self.dest = dest
        self.journal = journal
        self.broker = broker
        self.metrics = metrics
        self.queue_name = broker.names.queue(dest.id)
        self.breaker = breaker
        self.ramp = ramp
        self.limiter = RateLimiter(ramp)
        self.sender = sender
        self.parker = parker
        self._may_send = may_send
        self._why_not = why_not
        self._is_stopping = stopping
        self.delivered_total = 0
        self.last_delivery_at: float | None = None  # unix time
        self.stalled_head: float | None = None  # received_at of the oldest message handed back
        self._successes = 0  # 2xx answers, for telling a poison message from an outage
        self._inflight: dict[int, float | None] = {}  # id(message) -> received_at (unix)
        self._slots = asyncio.Condition()
        self._active = 0
        self._waiting = 0  # handlers waiting in _wait_for_slot for a slot
        # Label children bound once: `.labels()` per message was a measurable share of a drain.
        self._outcomes = {outcome: metrics.deliveries.labels(dest.id, outcome) for outcome in OUTCOMES}
        self._last_delivery = metrics.last_delivery.labels(dest.id)
        self._end_to_end = metrics.end_to_end.labels(dest.id)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_received_at(self) -> float | None:
        times = [t for t in self._inflight.values() if t is not None]
        if self.stalled_head is not None:
            times.append(self.stalled_head)
        return min(times) if times else None

    async def handle(self, raw: AbstractIncomingMessage, *, trial: bool = False) -> None:
        msg = QueuedMessage.from_amqp(raw)
        key = id(raw)
        received = unix_or_none(msg.received_at)
        self._inflight[key] = received
        outcome: str | None
        try:
            if trial:
                outcome = await self._deliver_trial(raw, msg)
            else:
                # The slot inline, not an async context manager: one fewer object per message.
                if self._waiting or self._active >= self.ramp.concurrency:
                    await self._wait_for_slot()
                self._active += 1
                try:
                    outcome = await self._deliver(raw, msg)
                finally:
                    self._active -= 1
                    if self._waiting:
                        await self._slot_freed()
        except Exception as exc:
            # A bug, not a backend answer. Requeue: this is what the quorum queue's delivery
            # limit is for. A message that keeps crashing the worker ends dead-lettered in
            # parking (x-death), instead of looping for ever or being lost.
            log.exception(
                "delivery failed unexpectedly; requeueing the message", extra=self._ctx(msg, "delivery_error")
            )
            self.metrics.task_restarts.labels("delivery-message").inc()
            outcome = await self._requeue(raw, msg, "error", f"{type(exc).__name__}: {exc}")
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
            self._outcomes[outcome].inc()

    async def _wait_for_slot(self) -> None:
        """Wait until the ramping concurrency has a free slot, or the message must go back.

        Sends are bounded by `ramp.concurrency`; `handle` takes a free slot without the
        condition's lock (one event loop: nothing runs between its check and its increment).
        Only a handler that has to wait, and a release while someone waits (`_slot_freed`),
        go through the condition.
        """
        self._waiting += 1
        try:
            async with self._slots:
                await self._slots.wait_for(lambda: self._active < self.ramp.concurrency or not self._may_send())
        finally:
            self._waiting -= 1

    async def _slot_freed(self) -> None:
        async with self._slots:
            self._slots.notify(max(1, self.ramp.concurrency - self._active))

    async def _deliver(self, raw: AbstractIncomingMessage, msg: QueuedMessage) -> str | None:
        if not self._may_send():
            if self._is_stopping():
                return None  # left unacked: the broker returns it when the channel closes
            return await self.hand_back(raw, msg, self._why_not())
        successes_before = self._successes
        attempts = [msg.attempts]
        try:
            answer = await self._attempts(msg, attempts)
        except PermanentDeliveryError as exc:
            return await self._park(raw, msg, "rejected", exc, attempts[0])
        except TransientDeliveryError as exc:
            # Opened by `failure_threshold` distinct messages failing while this one was: an outage.
            outage = self.breaker.state is not CircuitState.CLOSED
            if attempts[0] >= self.dest.max_attempts:
                # Poison or outage? Others got through while this one failed, or the backend's
                # health check says it is up: the fault is this message's. Otherwise the
                # backend is down for everyone: open the circuit and let the message wait.
                if self._successes > successes_before or await self.sender.probe():
                    return await self._park(raw, msg, "max_attempts", exc, attempts[0])
                self.breaker.force_open()
                outage = True  # the health check confirmed it: the backend is down for everyone
            if self._is_stopping():
                return None
            # If the outage opened the circuit while this one was failing, or the health check
            # confirmed the backend down when its attempts ran out, these failures were the
            # outage's, not this message's, and are not charged: a flapping backend would otherwise
            # park healthy messages as max_attempts (drill f: a message alone in flight used all 8
            # attempts in one down phase, kept them, and was parked at its next failure). A poison
            # message among healthy traffic never opens the circuit (one failure per distinct
            # message) and the health check says up, so it still reaches the limit and is parked.
            charged = msg.attempts if outage else attempts[0]
            return await self.hand_back(raw, msg.with_attempts(charged), self._why_not())
        return await self._settle(raw, msg, "delivered", EventKind.DELIVERED, status=answer.status, attempt=attempts[0])

    async def _attempts(self, msg: QueuedMessage, attempts: list[int]) -> Answer:
        """POST until success, a permanent answer, `max_attempts` in all, or the circuit leaves CLOSED."""
        try:
            return await self._post(msg, attempts)  # the first try needs no retry machinery
        except TransientDeliveryError as first:
            if attempts[0] >= self.dest.max_attempts or not self._may_send():
                raise
            replay: TransientDeliveryError | None = first
        budget = replace(self.dest, max_attempts=self.dest.max_attempts - attempts[0] + 1)
        answer: Answer | None = None
        async for attempt in retrying(budget, should_continue=self._may_send, before_sleep=self._before_retry(msg)):
            with attempt:
                if replay is not None:  # tenacity's attempt 1 is the failure we already had
                    failure, replay = replay, None
                    raise failure
                if not self._may_send():
                    raise TransientDeliveryError("circuit opened; handing the message back to its queue")
                answer = await self._post(msg, attempts)
        assert answer is not None  # the loop ends without raising only after a success
        return answer

    async def _post(self, msg: QueuedMessage, attempts: list[int]) -> Answer:
        await self.limiter.acquire()
        attempts[0] += 1
        try:
            answer = await self._send(msg, attempts[0])
        except TransientDeliveryError:
            self.breaker.record_failure(msg.message_id)
            raise
        self.breaker.record_success()  # a permanent 4xx also proves the backend is up
        self._successes += 1
        return answer

    async def _send(self, msg: QueuedMessage, attempt: int) -> Answer:
        """One POST, journaled as an attempt (time, status or error class, duration, excerpt) however it ends."""
        at, started = time.time(), time.perf_counter()
        try:
            answer = await self.sender.send(msg, attempt)
        except DeliveryError as exc:
            self.journal.attempt(msg, at, time.perf_counter() - started, failure=exc)
            raise
        self.journal.attempt(msg, at, time.perf_counter() - started, answer=answer)
        return answer

    async def _deliver_trial(self, raw: AbstractIncomingMessage, msg: QueuedMessage) -> str | None:
        """The half-open trial: one POST; its answer decides the circuit; a failure costs the message nothing."""
        try:
            answer = await self._send(msg, msg.attempts + 1)
        except PermanentDeliveryError as exc:
            self.breaker.record_success()
            return await self._park(raw, msg, "rejected", exc, msg.attempts + 1)
        except TransientDeliveryError as exc:
            self.breaker.record_failure()
            log.info("trial delivery failed: %s; circuit stays open", exc, extra=self._ctx(msg, "trial_failed"))
            return await self.hand_back(raw, msg, "trial_failed")
        except BaseException:
            self.breaker.record_failure()  # an abandoned trial must not leave the circuit half-open
            raise
        self.breaker.record_success()
        self._successes += 1
        return await self._settle(
            raw, msg, "delivered", EventKind.DELIVERED, status=answer.status, attempt=msg.attempts + 1
        )

    @staticmethod
    def _held(raw: AbstractIncomingMessage) -> bool:
        """Still ours to settle: its channel is open (else the broker has already taken it back)."""
        return not raw.channel.is_closed

    async def _settle(
        self,
        raw: AbstractIncomingMessage,
        msg: QueuedMessage,
        outcome: str,
        kind: EventKind,
        *,
        status: int | None = None,
        error: str | None = None,
        detail: str = "",
        **more: object,
    ) -> str | None:
        """Journal the settlement, *then* ack: an ack is never ahead of its event (journaling.py).

        None if the journal closed before the event was written: the message stays unacked.
        """
        if not await self.journal.settled(kind, msg, status=status, error=error, detail=detail):
            return None
        try:
            await raw.ack()
        except CHANNEL_ERRORS as exc:  # channel gone: the broker already returned it; it comes back once more
            log.warning("could not ack (%s); the broker will redeliver it", exc, extra=self._ctx(msg, "ack_failed"))
        if outcome == "delivered" and log.isEnabledFor(logging.DEBUG):
            # Counted (swgw_deliveries_total) and journaled (`delivered`); a line per message at
            # INFO cost ~10% of a drain (bench/results/ANALYSIS.md), so it is DEBUG.
            log.debug("delivered", extra=self._ctx(msg, "delivered", **more))
        return outcome

    async def hand_back(self, raw: AbstractIncomingMessage, msg: QueuedMessage, reason: str) -> str | None:
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
            return await self._requeue(raw, msg, reason, "republish failed")
        self.metrics.returned.labels(self.dest.id, reason).inc()
        return await self._settle(raw, msg, "returned", EventKind.RETURNED, error=reason)

    async def _requeue(self, raw: AbstractIncomingMessage, msg: QueuedMessage, reason: str, detail: str) -> str:
        """Nack-requeue, spending a delivery count; journaled `dead_lettered` first when it is the last."""
        if dead_letters(raw, self.dest.delivery_limit):
            await self.journal.settled(
                EventKind.DEAD_LETTERED, msg, error="delivery_limit", detail=f"{reason}: {detail}"
            )
        else:
            self.journal.requeued(msg, reason, detail)
        with contextlib.suppress(*CHANNEL_ERRORS):
            await raw.nack(requeue=True)
        return "requeued"

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
            held=lambda: self._held(raw) and not self._is_stopping(),
        )  # fmt: skip
        if not parked:
            return None
        excerpt = exc.excerpt or str(exc)
        return await self._settle(raw, msg, "parked", EventKind.PARKED, status=exc.status, error=reason, detail=excerpt)

    def _delivered(self, received: float | None) -> None:
        now = time.time()
        self.delivered_total += 1
        self.last_delivery_at = now
        self._last_delivery.set(now)
        if received is not None:
            self._end_to_end.observe(max(0.0, now - received))

    async def notify_slots(self) -> None:
        async with self._slots:
            self._slots.notify_all()

    def _ctx(self, msg: QueuedMessage, event: str, **more: object) -> dict[str, object]:
        """Log context every message event carries (never the body)."""
        return {
            "event": event,
            "message_id": msg.message_id,
            "partner": msg.sender,
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
