"""Broker publishing without a broker: what a confirm timeout hands over (gateway/broker/publisher.py).

A fake exchange answers a publish only when the test resolves its future, so a confirm
timeout happens for certain, whatever the machine's load; nothing here measures time.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
from prometheus_client import CollectorRegistry

from gateway.broker.publisher import Broker
from gateway.errors import BrokerUnavailable, ConfirmTimeout
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from tests.helpers import config_doc, write_settings


class Exchange:
    """Publishes wait for the test (`answers[i]` is the i-th publish's confirm) unless `respond`
    is set: "ack" confirms at once, an exception is raised at once as the broker's answer."""

    def __init__(self) -> None:
        self.answers: list[asyncio.Future[None]] = []
        self.published = asyncio.Event()
        self.respond: str | Exception | None = None

    async def publish(self, message: aio_pika.Message, routing_key: str, mandatory: bool) -> Any:
        self.published.set()
        if isinstance(self.respond, Exception):
            raise self.respond
        if self.respond == "ack":
            return None
        answer = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        return await answer


class ReadyBroker(Broker):
    """A Broker that believes it is connected, publishing into a fake exchange."""

    @property
    def ready(self) -> bool:
        return True

    @property
    def blocked(self) -> bool:
        return False


@pytest.fixture
def broker(tmp_path: Path) -> tuple[ReadyBroker, Exchange]:
    # A tiny confirm timeout is safe here: the fake never confirms unless the test says so.
    settings = write_settings(tmp_path, config_doc("swgw-unit", broker={"confirm_timeout_s": 0.01}))
    b = ReadyBroker(settings, Metrics(CollectorRegistry()))
    exchange = Exchange()
    b._exchange = exchange  # type: ignore[assignment]
    b._channel = SimpleNamespace(default_exchange=exchange)  # type: ignore[assignment]
    return b, exchange


def message() -> QueuedMessage:
    return QueuedMessage(
        message_id="M-1",
        correlation_id=None,
        message_type="CUSDEC",
        sender="VN-NSW",
        receiver="VN-VNACCS",
        destination="vnaccs",
        received_at="2026-11-23T01:00:00.000Z",
        body=b"<x/>",
    )


def failures(b: Broker, reason: str) -> float:
    return b.metrics.registry.get_sample_value("swgw_broker_publish_failures_total", {"reason": reason}) or 0.0


def nack() -> Exception:
    return aiormq.exceptions.DeliveryError(None, None)  # type: ignore[arg-type]


async def test_keep_waiting_hands_the_still_running_publish_over_and_a_late_ack_completes_it(
    broker: tuple[ReadyBroker, Exchange],
) -> None:
    b, exchange = broker
    with pytest.raises(ConfirmTimeout) as caught:
        await b.publish(message(), keep_waiting=True)
    assert (caught.value.status, caught.value.reason) == (503, "broker_timeout")
    assert "may or may not have been queued" in caught.value.detail
    outcome = caught.value.outcome
    assert outcome is not None
    assert not outcome.done()  # still waiting for the broker's answer
    assert failures(b, "timeout") == 1
    exchange.answers[0].set_result(None)  # the late ack
    await asyncio.wait_for(outcome, timeout=5)
    assert outcome.result() is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (nack(), "broker_nack"),
        (aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"), "broker_unavailable"),
    ],
)
async def test_a_late_nack_or_lost_connection_ends_the_outcome_with_broker_unavailable(
    broker: tuple[ReadyBroker, Exchange], answer: Exception, reason: str
) -> None:
    b, exchange = broker
    with pytest.raises(ConfirmTimeout) as caught:
        await b.publish(message(), keep_waiting=True)
    outcome = caught.value.outcome
    assert outcome is not None
    exchange.answers[0].set_exception(answer)
    with pytest.raises(BrokerUnavailable) as late:
        await asyncio.wait_for(outcome, timeout=5)
    assert late.value.reason == reason
    assert failures(b, "nacked") + failures(b, "disconnected") == 0  # the publish was counted once, as timeout


async def test_without_keep_waiting_a_timed_out_publish_is_given_up(broker: tuple[ReadyBroker, Exchange]) -> None:
    b, exchange = broker
    with pytest.raises(ConfirmTimeout) as caught:
        await b.publish(message())
    assert caught.value.outcome is None
    assert exchange.answers[0].cancelled()  # nothing is left waiting for the confirm
    with pytest.raises(ConfirmTimeout):  # publish_to_queue (parking, replay): the same contract
        await b.publish_to_queue("swgw-unit.parked.vnaccs", message().to_amqp())


@pytest.mark.parametrize("keep_waiting", [True, False])
async def test_an_answer_within_the_timeout_returns_or_raises_at_once(
    broker: tuple[ReadyBroker, Exchange], keep_waiting: bool
) -> None:
    b, exchange = broker
    exchange.respond = "ack"
    await b.publish(message(), keep_waiting=keep_waiting)
    exchange.respond = nack()
    with pytest.raises(BrokerUnavailable) as caught:
        await b.publish(message(), keep_waiting=keep_waiting)
    assert not isinstance(caught.value, ConfirmTimeout)
    assert caught.value.reason == "broker_nack"
    assert failures(b, "nacked") == 1


async def test_a_cancelled_request_cancels_its_publish(broker: tuple[ReadyBroker, Exchange]) -> None:
    b, exchange = broker
    b.settings = replace(b.settings, broker=replace(b.settings.broker, confirm_timeout_s=60))
    request = asyncio.create_task(b.publish(message(), keep_waiting=True))
    await exchange.published.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert exchange.answers[0].cancelled()  # the publish task gave its confirm up with the request
