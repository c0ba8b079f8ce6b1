"""Destination and parking queue arguments for several replicas, and reading RabbitMQ's PRECONDITION_FAILED reply."""

from __future__ import annotations

import pytest

from gateway.broker.topology import (
    GROUP_SIZE,
    PARKING_ARGUMENTS,
    PARKING_DELIVERY_LIMIT,
    SAC,
    Names,
    inequivalent,
    parking_arguments,
    queue_arguments,
)
from gateway.settings.model import Destination

NAMES = Names("swgw")


def test_destination_queues_have_single_active_consumer_and_the_group_size() -> None:
    args = queue_arguments(NAMES, Destination(id="vnaccs", url="http://127.0.0.1:1/"), 3)
    assert args[SAC] is True
    assert args[GROUP_SIZE] == 3
    assert GROUP_SIZE not in queue_arguments(NAMES, Destination(id="vnaccs", url="http://127.0.0.1:1/"))


def test_an_inbox_queue_has_no_sac_because_it_is_read_with_basic_get() -> None:
    inbox = Destination(id="box", url="", kind="inbox", partner="P")
    assert SAC not in queue_arguments(NAMES, inbox, 3)


def test_parking_queues_are_quorum_queues_with_the_destinations_group_size() -> None:
    args = parking_arguments(3)
    assert args["x-queue-type"] == "quorum"  # replicated: parking goes on while a node is down
    assert (
        args[GROUP_SIZE] == queue_arguments(NAMES, Destination(id="vnaccs", url="http://127.0.0.1:1/"), 3)[GROUP_SIZE]
    )
    assert GROUP_SIZE not in parking_arguments()
    assert parking_arguments() == PARKING_ARGUMENTS
    parking_arguments(5)[GROUP_SIZE] = 1
    assert GROUP_SIZE not in PARKING_ARGUMENTS  # a copy each time


def test_a_parked_message_can_never_reach_a_delivery_limit() -> None:
    """Set explicitly (4.0 defaults to 20), positive (3.10 drops at once with -1), and never reached:
    every listing or replay spends one delivery of each message it reads."""
    limit = parking_arguments(3)["x-delivery-limit"]
    assert limit == PARKING_DELIVERY_LIMIT == 2**31 - 1
    assert limit > 10 * 365 * 24 * 3600  # a listing a second for ten years
    assert limit < 2**31  # an AMQP signed 32-bit integer, as every client encodes it
    for key in ("x-dead-letter-exchange", "x-message-ttl", "x-max-length", "x-expires", "x-overflow"):
        assert key not in parking_arguments(3), key


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': "
            "received the value 'true' of type 'bool' but current is none",
            ("x-single-active-consumer", None),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': "
            "received none but current is the value '3' of type 'byte'",
            ("x-quorum-initial-group-size", "3"),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': "
            "received '2' but current is '3'",
            ("x-quorum-initial-group-size", "3"),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'swgw.parked.vnaccs' in vhost '/': "
            "received the value 'quorum' of type 'longstr' but current is the value 'classic' of type 'longstr'",
            ("x-queue-type", "classic"),
        ),
        ("PRECONDITION_FAILED - something else entirely", None),
    ],
)
def test_inequivalent_reads_the_argument_and_its_current_value(reply: str, expected: object) -> None:
    assert inequivalent(reply) == expected
