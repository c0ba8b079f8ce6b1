"""Replay's publish straight on the channel (gateway/operations/republish.py) sends exactly what
`QueuedMessage.from_parts(...).unparked().to_amqp()` sent before it: the same body, and
properties whose AMQP encoding is the same bytes, parking headers and x-death stripped."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import aio_pika
import aiormq.abc
import pytest
from pamqp import frame
from pamqp.header import ContentHeader

from gateway.messages import Parking, QueuedMessage
from gateway.operations.republish import publish

BODY = b'<?xml version="1.0"?><Envelope><MessageId>R-1</MessageId></Envelope>'
PARKING = Parking(reason="rejected", status=400, excerpt="bad <x>", attempts=3, parked_at="2026-11-23T01:02:03.000Z")
WHEN = dt.datetime(2026, 11, 23, 1, 2, 3, tzinfo=dt.UTC)
X_DEATH = {
    "x-death": [{"count": 1, "reason": "delivery_limit", "queue": "p.dest.vnaccs", "time": WHEN, "exchange": ""}],
    "x-first-death-reason": "delivery_limit",
    "x-first-death-queue": "p.dest.vnaccs",
    "x-delivery-count": 20,
}


def queued(**kw: Any) -> QueuedMessage:
    base: dict[str, Any] = {
        "message_id": "R-1",
        "correlation_id": "C-9",
        "message_type": "CUSDEC",
        "sender": "VN-NSW",
        "receiver": "VN-VNACCS",
        "destination": "vnaccs",
        "received_at": "2026-11-23T01:00:00.000Z",
        "body": BODY,
    }
    return QueuedMessage(**(base | kw))


def as_delivered(message: aio_pika.Message, extra: dict[str, Any]) -> dict[str, Any]:
    """The headers as a consumer gets them: `extra` (what RabbitMQ adds) merged in, then the
    properties encoded and decoded by pamqp as on the wire."""
    props = message.properties
    props.headers = {**(props.headers or {}), **extra}
    _, _, decoded = frame.unmarshal(frame.marshal(ContentHeader(0, len(message.body), props), 1))
    assert isinstance(decoded, ContentHeader)
    return dict(decoded.properties.headers or {})


class Channel:
    """Records basic_publish's arguments, as aiormq's channel takes them."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, dict[str, Any]]] = []

    async def basic_publish(self, body: bytes, **kw: Any) -> None:
        self.calls.append((body, kw))


def wire(props: aiormq.spec.Basic.Properties, body: bytes) -> bytes:
    return frame.marshal(ContentHeader(0, len(body), props), 1)


CASES = {
    "parked-by-the-gateway": (queued(attempts=4).parked(PARKING), {}),
    "parked-no-correlation-test": (queued(correlation_id=None, test=True).parked(PARKING), {}),
    "parked-then-dead-lettered": (queued().parked(PARKING), X_DEATH),
    "dead-lettered-by-rabbitmq": (queued(attempts=2), X_DEATH),
    "foreign-header": (queued().parked(PARKING), {"x-other": "foreign", "x-swgw-parked-at": "2026-01-01"}),
}


@pytest.mark.parametrize(("msg", "extra"), CASES.values(), ids=CASES.keys())
async def test_the_publish_is_byte_identical_to_unparked_to_amqp(msg: QueuedMessage, extra: dict[str, Any]) -> None:
    headers = as_delivered(msg.to_amqp(), extra)
    assert {"x-swgw-parked-reason", "x-death"} & set(headers)  # parked: there is something to strip
    parked = QueuedMessage.from_parts(BODY, headers)
    old = parked.unparked().to_amqp()  # what replay published before issue 17's fast path
    channel = Channel()
    await publish(cast(aiormq.abc.AbstractChannel, channel), "p.messages", "vnaccs", parked, bound_s=7.0)

    [(body, kw)] = channel.calls
    assert body == old.body == BODY
    assert wire(kw["properties"], body) == wire(old.properties, old.body)
    assert kw | {"properties": None} == {
        "exchange": "p.messages",
        "routing_key": "vnaccs",
        "properties": None,
        "mandatory": True,  # a missing route fails the publish: the message stays parked
        "timeout": 7.0,
    }
    sent = kw["properties"].headers
    assert not [h for h in sent if h.startswith(("x-death", "x-first-death", "x-delivery", "x-swgw-parked"))]
    assert "x-swgw-attempts" not in sent
    assert "x-other" not in sent  # a foreign header is not carried over either, as before
    assert sent["x-swgw-message-id"] == "R-1"
