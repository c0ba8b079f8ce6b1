"""Routing lookup, the AMQP round trip of a queued message, and broker names/arguments."""

from __future__ import annotations

import pytest

from gateway.broker.topology import PARKING_ARGUMENTS, Names, queue_arguments
from gateway.errors import InvalidMessage
from gateway.intake.routing import Router
from gateway.messages import Parking, QueuedMessage
from gateway.settings.model import Destination, Route


def test_exact_route_wins_over_wildcard_and_nothing_else_matches() -> None:
    r = Router([Route("VN-NSW", "*", "nsw"), Route("VN-NSW", "CUSRES", "special")])
    assert r.destination_for("VN-NSW", "CUSRES") == "special"
    assert r.destination_for("VN-NSW", "ACK") == "nsw"
    assert r.destination_for("TH-NSW", "ACK") is None
    assert r.route("VN-NSW", "ACK") == "nsw"
    with pytest.raises(InvalidMessage) as exc:
        r.route("TH-NSW", "ACK")
    assert (exc.value.status, exc.value.reason) == (422, "no_route")


def msg(**kw: object) -> QueuedMessage:
    base = {
        "message_id": "M-1",
        "correlation_id": "C-0",
        "message_type": "CUSDEC",
        "sender": "VN-NSW",
        "receiver": "VN-VNACCS",
        "destination": "vnaccs",
        "received_at": "2026-11-23T01:00:00.000Z",
        "body": b"<x/>",
    }
    base.update(kw)
    return QueuedMessage(**base)  # type: ignore[arg-type]


def test_amqp_round_trip_keeps_everything_delivery_needs() -> None:
    m = msg()
    amqp = m.to_amqp()
    assert amqp.delivery_mode == 2
    assert amqp.message_id == "M-1"
    assert amqp.content_type == "application/xml"
    back = QueuedMessage.from_parts(amqp.body, amqp.headers)
    assert back == m


def test_parking_headers_round_trip_and_unpark_keeps_the_body() -> None:
    p = Parking("rejected", 400, "x" * 500, 3, "2026-11-23T02:00:00.000Z")
    parked = msg().parked(p)
    amqp = parked.to_amqp()
    back = QueuedMessage.from_parts(amqp.body, amqp.headers)
    assert back.parking is not None
    assert (back.parking.reason, back.parking.status, back.parking.attempts) == ("rejected", 400, 3)
    assert len(back.parking.excerpt) == 200  # capped
    assert back.unparked().to_amqp().headers == msg().to_amqp().headers
    assert back.body == b"<x/>"


def test_attempts_travel_with_a_handed_back_message_and_replay_starts_afresh() -> None:
    m = msg().with_attempts(5)
    back = QueuedMessage.from_parts(m.to_amqp().body, m.to_amqp().headers)
    assert back.attempts == 5
    assert back.unparked().attempts == 0
    assert "x-swgw-attempts" not in msg().to_amqp().headers  # no header while there is nothing to count
    for garbage in ("7", -3, True, None, 2.5):  # a foreign or garbled header counts as no attempts
        assert QueuedMessage.from_parts(b"<x/>", {**m.to_amqp().headers, "x-swgw-attempts": garbage}).attempts == 0


def test_dead_lettered_message_reads_as_parked() -> None:
    m = msg().to_amqp()
    headers = dict(m.headers)
    headers["x-death"] = [{"reason": "delivery_limit", "queue": "q"}]
    back = QueuedMessage.from_parts(m.body, headers)
    assert back.parking is not None
    assert back.parking.reason == "dead-lettered:delivery_limit"


def test_http_headers_let_the_backend_deduplicate() -> None:
    h = msg().http_headers(attempt=4)
    assert h["X-Message-Id"] == "M-1"
    assert h["X-Delivery-Attempt"] == "4"
    assert h["X-Correlation-Id"] == "C-0"


def test_queue_arguments_are_deliberate() -> None:
    names = Names("swgw")
    args = queue_arguments(names, Destination(id="vnaccs", url="http://127.0.0.1:1/", delivery_limit=500))
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] == 500  # not RabbitMQ 4.x's default of 20
    assert args["x-dead-letter-routing-key"] == "swgw.parked.vnaccs"
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert PARKING_ARGUMENTS["x-queue-type"] == "quorum"  # replicated; a limit no listing reaches
    assert PARKING_ARGUMENTS["x-delivery-limit"] == 2**31 - 1
    assert (names.exchange, names.queue("a"), names.parking("a")) == ("swgw.messages", "swgw.dest.a", "swgw.parked.a")
