"""Failing over without a broker: the node list tried in turn, and a new publish channel after a nack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.broker.nodes import Nodes
from gateway.errors import BrokerUnavailable
from gateway.observability.metrics import Metrics
from tests.helpers import config_doc, write_settings
from tests.unit.broker.test_publisher import Exchange, ReadyBroker, message, nack

URLS = ["amqp://u:p@127.0.0.1:5601/", "amqp://u:p@127.0.0.1:5602/", "amqp://u:p@127.0.0.1:5603/"]


def settings(tmp_path: Path) -> Any:
    return write_settings(tmp_path, config_doc("swgw-unit", broker={"url": URLS, "reconnect_interval_s": 0.01}))


async def test_connect_takes_the_next_node_that_answers_starting_after_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = {5602, 5603}
    tried: list[int] = []

    async def connect(url: str, **_: Any) -> Any:
        port = int(url.split(":")[3].split("/")[0])
        tried.append(port)
        if port not in up:
            raise ConnectionRefusedError(f"port {port}")
        return SimpleNamespace(port=port)

    monkeypatch.setattr("gateway.broker.nodes.aio_pika.connect", connect)
    n = Nodes(settings(tmp_path).broker, "test")
    first = await n.connect()
    assert (first.port, n.current, tried) == (5602, "127.0.0.1:5602", [5601, 5602])  # type: ignore[union-attr]
    second = await n.connect()  # its node was lost: the next one first
    assert second.port == 5603  # type: ignore[union-attr]
    up.clear()  # nobody answers: rounds until closing() says stop
    rounds = 0

    def closing() -> bool:
        nonlocal rounds
        rounds += 1
        return rounds > 4

    assert await n.connect(closing) is None


class Channel:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange, self.closed = exchange, False

    async def initialize(self, **_: Any) -> None:
        return None

    async def get_exchange(self, name: str, ensure: bool) -> Exchange:
        return self.exchange

    async def close(self) -> None:
        self.closed = True


async def test_a_nack_moves_publishing_to_a_new_channel(tmp_path: Path) -> None:
    s = write_settings(tmp_path, config_doc("swgw-unit", broker={"confirm_timeout_s": 0.01}))
    b = ReadyBroker(s, Metrics(CollectorRegistry()))
    stuck, fresh = Exchange(), Exchange()
    stuck.respond, fresh.respond = nack(), "ack"
    old = Channel(stuck)
    b._exchange, b._channel = stuck, old  # type: ignore[assignment]
    b.connection = SimpleNamespace(is_closed=False, channel=lambda **_: Channel(fresh))  # type: ignore[assignment]
    with pytest.raises(BrokerUnavailable):
        await b.publish(message())
    assert b._renewing is not None
    await b._renewing
    await b.publish(message())  # acked: on the new channel
    assert id(b._exchange) == id(fresh)
    await asyncio.gather(*b._closing_channels)
    assert old.closed  # the stuck one is closed once its publishes had their time
