"""Delivery's journal events, in order against the ack: never an ack before its committed event.

The deliverer runs on fakes that write one shared log: the writer's `record()` (committed
when it returns) and `post()`, the message's ack and nack, the republish of a hand-back and
the park. The integration tests (tests/integration/test_journal_events.py) show the same on
the real broker and stores; these pin the order step by step.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway.broker.topology import Names
from gateway.delivery.circuit import CircuitBreaker, SlowStart
from gateway.delivery.deliverer import Deliverer
from gateway.delivery.journaling import DeliveryJournal, dead_letters
from gateway.delivery.sender import Answer, error_class
from gateway.errors import PermanentDeliveryError, StoreError, TransientDeliveryError
from gateway.journal.model import Event
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination

DEST = Destination(id="vnaccs", url="http://backend.invalid/in", max_attempts=2, backoff_min_s=0, backoff_max_s=0)
MSG = QueuedMessage(
    message_id="M-1",
    correlation_id=None,
    message_type="CUSDEC",
    sender="VN-NSW",
    receiver="VN-VNACCS",
    destination="vnaccs",
    received_at="2026-11-23T08:00:00.000Z",
    body=b"<x/>",
)


class Writer:
    """A JournalWriter writing to the shared log; `closed` makes record() fail as after close()."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.events: list[Event] = []
        self.closed = False

    async def record(self, event: Event) -> None:
        await asyncio.sleep(0)  # a commit takes a tick at least
        if self.closed:
            raise StoreError("the journal is closed")
        self.events.append(event)
        self.log.append(f"record {event.kind.value}")

    def post(self, event: Event) -> None:
        self.events.append(event)
        self.log.append(f"post {event.kind.value}")


class Channel:
    is_closed = False


class Raw:
    """An incoming message: ack and nack go to the log."""

    def __init__(self, log: list[str], msg: QueuedMessage = MSG, delivery_count: int = 0) -> None:
        amqp = msg.to_amqp()
        self.body = amqp.body
        self.headers: dict[str, Any] = {**(amqp.headers or {}), "x-delivery-count": delivery_count}
        self.channel = Channel()
        self.log = log

    async def ack(self) -> None:
        self.log.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.log.append("nack")


class Broker:
    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.names = Names("t")
        self.log, self.fail = log, fail

    async def publish_to_queue(self, queue: str, message: object) -> None:
        from gateway.errors import BrokerUnavailable

        if self.fail:
            raise BrokerUnavailable("down")
        self.log.append("republish")


class Sender:
    def __init__(self, log: list[str], answers: list[Answer | Exception]) -> None:
        self.log, self.answers = log, answers

    async def send(self, msg: QueuedMessage, attempt: int) -> Answer:
        self.log.append("POST")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def probe(self) -> bool:
        return True


class Parker:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def park(self, msg: QueuedMessage, **kw: Any) -> bool:
        self.log.append("park")
        return True


def deliverer(log: list[str], writer: Writer, answers: list[Answer | Exception], **kw: Any) -> Deliverer:
    return Deliverer(
        DEST,
        Broker(log, fail=kw.pop("republish_fails", False)),  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        breaker=CircuitBreaker(failure_threshold=5),
        ramp=SlowStart(max_rate_per_s=1e6, max_concurrency=8, ramp_s=0),
        sender=Sender(log, answers),  # type: ignore[arg-type]
        parker=Parker(log),  # type: ignore[arg-type]
        may_send=kw.pop("may_send", lambda: True),
        why_not=lambda: "circuit",
        stopping=lambda: False,
        journal=DeliveryJournal(writer, DEST.id, clock=lambda: 1.0),  # type: ignore[arg-type]
    )


async def test_delivered_is_committed_before_the_ack_and_after_its_attempt() -> None:
    log: list[str] = []
    writer = Writer(log)
    await deliverer(log, writer, [Answer(202, "accepted")]).handle(Raw(log))  # type: ignore[arg-type]
    assert log == ["POST", "post attempt", "record delivered", "ack"]
    attempt, delivered = writer.events
    assert (attempt.status, attempt.error, attempt.detail, attempt.destination) == (202, None, "accepted", "vnaccs")
    assert attempt.duration_s is not None
    assert attempt.duration_s >= 0
    assert (delivered.sender, delivered.message_id, delivered.status) == ("VN-NSW", "M-1", 202)


async def test_parked_is_committed_after_the_park_and_before_the_ack() -> None:
    log: list[str] = []
    writer = Writer(log)
    rejected = PermanentDeliveryError("rejected with 400", status=400, excerpt="bad declaration")
    await deliverer(log, writer, [rejected]).handle(Raw(log))  # type: ignore[arg-type]
    assert log == ["POST", "post attempt", "park", "record parked", "ack"]
    parked = writer.events[-1]
    assert (parked.error, parked.status, parked.detail) == ("rejected", 400, "bad declaration")


async def test_returned_is_committed_after_the_republish_and_before_the_ack_of_the_original() -> None:
    log: list[str] = []
    writer = Writer(log)
    refused = TransientDeliveryError("connection failed")
    refused.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    sending = iter([True, False])  # the circuit opens after the first failure
    d = deliverer(log, writer, [refused], may_send=lambda: next(sending, False))
    await d.handle(Raw(log))  # type: ignore[arg-type]
    assert log == ["POST", "post attempt", "republish", "record returned", "ack"]
    attempt, returned = writer.events
    assert (attempt.status, attempt.error) == (None, "refused")
    assert returned.error == "circuit"


async def test_a_journal_that_closed_first_leaves_the_message_unacked() -> None:
    log: list[str] = []
    writer = Writer(log)
    writer.closed = True
    await deliverer(log, writer, [Answer(200, "")]).handle(Raw(log))  # type: ignore[arg-type]
    assert log == ["POST", "post attempt"]  # no ack, no nack: the broker takes it back with the channel


async def test_a_bug_requeues_and_the_last_requeue_is_recorded_dead_lettered_before_the_nack() -> None:
    log: list[str] = []
    writer = Writer(log)
    d = deliverer(log, writer, [RuntimeError("bug"), RuntimeError("bug")])
    await d.handle(Raw(log, delivery_count=0))  # type: ignore[arg-type]
    assert log == ["POST", "post returned", "nack"]
    assert writer.events[-1].error == "error"
    assert "RuntimeError: bug" in writer.events[-1].detail
    log.clear()
    await d.handle(Raw(log, delivery_count=DEST.delivery_limit))  # type: ignore[arg-type]
    assert log == ["POST", "record dead_lettered", "nack"]
    assert writer.events[-1].error == "delivery_limit"


async def test_a_failed_republish_requeues_journaled_as_returned() -> None:
    log: list[str] = []
    writer = Writer(log)
    sending = iter([True, False])
    d = deliverer(log, writer, [TransientDeliveryError("503", status=503)], republish_fails=True)
    d._may_send = lambda: next(sending, False)
    await d.handle(Raw(log))  # type: ignore[arg-type]
    assert log == ["POST", "post attempt", "post returned", "nack"]
    assert (writer.events[0].status, writer.events[0].error) == (503, None)
    assert writer.events[-1].detail == "requeued: republish failed"


@pytest.mark.parametrize(("count", "limit", "last"), [(0, 2, False), (1, 2, False), (2, 2, True), (5, 2, True)])
def test_dead_letters_when_the_count_is_at_the_limit(count: int, limit: int, last: bool) -> None:
    # RabbitMQ 3.10, x-delivery-limit 2: delivered with counts 0, 1, 2; the nack at 2 dead-letters.
    assert dead_letters(Raw([], delivery_count=count), limit) is last  # type: ignore[arg-type]


def test_error_classes() -> None:
    def failed(cause: BaseException) -> TransientDeliveryError:
        exc = TransientDeliveryError("failed")
        exc.__cause__ = cause
        return exc

    assert error_class(failed(TimeoutError())) == "timeout"
    assert error_class(failed(ConnectionRefusedError(errno.ECONNREFUSED, "x"))) == "refused"
    assert error_class(failed(aiohttp.ServerDisconnectedError())) == "reset"
    assert error_class(failed(aiohttp.ClientOSError(errno.ECONNRESET, "reset by peer"))) == "reset"
    assert error_class(failed(aiohttp.ClientPayloadError("cut"))) == "connection"
    assert error_class(TransientDeliveryError("backend answered 503", status=503)) is None


async def test_a_real_refused_connection_is_classed_refused() -> None:
    from gateway.delivery.sender import Sender as RealSender

    sender = RealSender(Destination(id="d", url="http://127.0.0.1:9/in", timeout_s=2), Metrics(CollectorRegistry()))
    await sender.start()
    try:
        with pytest.raises(TransientDeliveryError) as info:
            await sender.send(MSG, 1)
    finally:
        await sender.close()
    assert error_class(info.value) == "refused"
