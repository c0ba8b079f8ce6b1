"""Destination queue arguments for several replicas, and reading RabbitMQ's PRECONDITION_FAILED reply."""

from __future__ import annotations

import pytest

from gateway.broker.topology import GROUP_SIZE, SAC, Names, inequivalent, queue_arguments
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
        ("PRECONDITION_FAILED - something else entirely", None),
    ],
)
def test_inequivalent_reads_the_argument_and_its_current_value(reply: str, expected: object) -> None:
    assert inequivalent(reply) == expected
