"""Which failed attempts a message is charged for (`x-swgw-attempts`), on the deliverer's fakes.

A message is parked as `max_attempts` once it has used them all while the backend is evidently
up, so every attempt charged to it must be its own failure, not an outage's. When the circuit
opens while a message is failing, `failure_threshold` distinct messages failed: the failures
were the outage's and the hand-back carries the attempts the message came with. Drill f (a
flapping backend, tests/drills/test_fault_matrix.py) parked a healthy message without this.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aio_pika
from prometheus_client import CollectorRegistry

from gateway.delivery.circuit import CircuitBreaker, CircuitState, SlowStart
from gateway.delivery.deliverer import Deliverer
from gateway.delivery.journaling import DeliveryJournal
from gateway.errors import TransientDeliveryError
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from tests.unit.delivery.test_journaling import DEST, MSG, Broker, Parker, Raw, Sender, Writer

DEST8 = replace(DEST, max_attempts=8)


class Down(Sender):
    """Every POST fails, and the health check says the backend is down too: an outage."""

    async def probe(self) -> bool:
        return False


class Capturing(Broker):
    """The broker fake, keeping what a hand-back republished."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(log)
        self.republished: list[aio_pika.Message] = []

    async def publish_to_queue(self, queue: str, message: object) -> None:
        assert isinstance(message, aio_pika.Message)
        self.republished.append(message)
        await super().publish_to_queue(queue, message)


def make(log: list[str], broker: Capturing, breaker: CircuitBreaker, **kw: Any) -> Deliverer:
    failing = TransientDeliveryError("503", status=503)
    d: Deliverer
    d = Deliverer(
        DEST8,
        broker,  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        breaker=breaker,
        ramp=SlowStart(max_rate_per_s=1e6, max_concurrency=8, ramp_s=0),
        sender=Down(log, [failing] * 5),  # type: ignore[arg-type]
        parker=Parker(log),  # type: ignore[arg-type]
        may_send=kw.get("may_send", lambda: breaker.state is CircuitState.CLOSED),
        why_not=lambda: "circuit" if breaker.state is not CircuitState.CLOSED else "paused",
        stopping=lambda: False,
        journal=DeliveryJournal(Writer(log), DEST8.id, clock=lambda: 1.0),
    )
    return d


def charged(message: aio_pika.Message) -> int:
    headers = message.headers or {}
    value = headers["x-swgw-attempts"]
    assert isinstance(value, int)
    return value


async def test_failures_the_circuit_opened_on_are_not_charged_to_the_message() -> None:
    log: list[str] = []
    broker = Capturing(log)
    breaker = CircuitBreaker(failure_threshold=1)  # this failure is the one that opens it
    came_with = MSG.with_attempts(1)
    await make(log, broker, breaker).handle(Raw(log, came_with))  # type: ignore[arg-type]
    assert breaker.state is CircuitState.OPEN
    assert log.count("POST") == 1
    assert [charged(m) for m in broker.republished] == [1]  # came with 1, leaves with 1
    assert "park" not in log


async def test_failures_with_the_circuit_still_closed_are_charged() -> None:
    # Handed back for another reason (a pause) while the circuit stays closed: the failure was the
    # message's own as far as anyone can tell, and counts towards max_attempts.
    log: list[str] = []
    broker = Capturing(log)
    breaker = CircuitBreaker(failure_threshold=5)
    sending = iter([True, False])  # paused after the first failure
    d = make(log, broker, breaker, may_send=lambda: next(sending, False))
    await d.handle(Raw(log, MSG.with_attempts(1)))  # type: ignore[arg-type]
    assert breaker.state is CircuitState.CLOSED
    assert [charged(m) for m in broker.republished] == [2]


async def test_a_message_in_flight_at_every_opening_is_never_charged_nor_parked_by_them() -> None:
    # 1,000 openings of the circuit (a backend flapping all day), the message failing at each:
    # it leaves each time with what it came with, one attempt short of max_attempts.
    msg: QueuedMessage = MSG.with_attempts(DEST8.max_attempts - 1)
    for _ in range(1_000):
        log: list[str] = []
        broker = Capturing(log)
        breaker = CircuitBreaker(failure_threshold=1)
        await make(log, broker, breaker).handle(Raw(log, msg))  # type: ignore[arg-type]
        assert "park" not in log
        assert [charged(m) for m in broker.republished] == [DEST8.max_attempts - 1]


async def test_attempts_used_up_while_the_health_check_says_down_are_not_charged() -> None:
    # Drill f, seen in CI: a message alone in flight fails every attempt in one down phase of a
    # flapping backend, too few distinct failures to open the circuit. The health check says
    # down, so the circuit is forced open: the failures were the outage's and it leaves with what
    # it came with; keeping them had it parked as max_attempts at its next single failure.
    log: list[str] = []
    broker = Capturing(log)
    breaker = CircuitBreaker(failure_threshold=5)  # one message alone never opens it
    d = make(log, broker, breaker)
    d.sender = Down(log, [TransientDeliveryError("refused")] * DEST8.max_attempts)  # type: ignore[assignment]
    await d.handle(Raw(log, MSG.with_attempts(1)))  # type: ignore[arg-type]
    assert log.count("POST") == DEST8.max_attempts - 1  # it came with one
    assert breaker.state is CircuitState.OPEN
    assert [charged(m) for m in broker.republished] == [1]
    assert "park" not in log
