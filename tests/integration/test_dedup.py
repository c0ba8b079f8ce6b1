"""Duplicate elimination through HTTP against the real RabbitMQ, with SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from gateway.broker import Names, queue_arguments
from gateway.config import Settings
from tests.helpers import (
    SCHEMAS,
    config_doc,
    drop_pg_table,
    get_all,
    require_postgres,
    run_gateway,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration
BODY = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()


@pytest.fixture(params=["sqlite", "postgres"])
async def settings(
    request: pytest.FixtureRequest, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> AsyncIterator[Settings]:
    doc: dict[str, Any] = config_doc(prefix)
    if request.param == "postgres":
        doc["dedup"] = {"backend": "postgres", "dsn": require_postgres()}
    s = write_settings(tmp_path, doc)
    cleanup.append(s)
    yield s
    if request.param == "postgres":
        await drop_pg_table(s.dedup.table)


def queued_ids(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[str | None]:
    return [m.message_id for m in messages]


async def test_a_resend_gets_the_original_receipt_and_is_queued_once(settings: Settings) -> None:
    body = with_message_id(BODY, "DUP-1")
    async with run_gateway(settings) as gw:
        status, first, _ = await gw.post(body)
        assert status == 202, first
        status, again, _ = await gw.post(body)
        assert status == 200, again
        assert again == {**first, "duplicate": True}
        labels = {"partner": "VN-NSW", "message_type": "CUSDEC"}
        assert gw.metric("swgw_ingest_messages_total", {**labels, "outcome": "duplicate"}) == 1
        assert gw.metric("swgw_ingest_messages_total", {**labels, "outcome": "accepted"}) == 1
    queued = await get_all(Names(settings.broker.prefix).queue("vnaccs"))
    assert queued_ids(queued) == ["DUP-1"]


async def test_a_failed_publish_is_not_recorded_and_the_retry_is_queued(settings: Settings) -> None:
    names = Names(settings.broker.prefix)
    body = with_message_id(BODY, "RETRY-1")
    async with run_gateway(settings) as gw:
        conn = await aio_pika.connect(settings.broker.url.reveal())
        async with conn:
            ch = await conn.channel()
            await ch.queue_delete(names.queue("vnaccs"))
            status, problem, _ = await gw.post(body)
            assert status == 503, problem
            assert problem["reason"] == "broker_unroutable"
            # the operator restores the queue; the partner's retry must be accepted, not "duplicate"
            queue = await ch.declare_queue(
                names.queue("vnaccs"), durable=True, arguments=queue_arguments(names, settings.destinations[0])
            )
            await queue.bind(names.exchange, routing_key="vnaccs")
        status, receipt, _ = await gw.post(body)
        assert status == 202, receipt
        assert "duplicate" not in receipt
    assert queued_ids(await get_all(names.queue("vnaccs"))) == ["RETRY-1"]


async def test_the_store_survives_a_gateway_restart(settings: Settings) -> None:
    body = with_message_id(BODY, "RESTART-1")
    async with run_gateway(settings) as gw:
        status, first, _ = await gw.post(body)
        assert status == 202, first
    async with run_gateway(settings) as gw:  # a new app instance on the same store
        status, again, _ = await gw.post(body)
        assert status == 200, again
        assert again["received_at"] == first["received_at"]
        assert again["duplicate"] is True
    assert queued_ids(await get_all(Names(settings.broker.prefix).queue("vnaccs"))) == ["RESTART-1"]


async def test_simultaneous_posts_of_one_id_queue_it_once(settings: Settings) -> None:
    body = with_message_id(BODY, "RACE-1")
    async with run_gateway(settings) as gw:
        results = await asyncio.gather(*[gw.post(body) for _ in range(12)])
        statuses = sorted(r[0] for r in results)
        assert statuses.count(202) == 1, statuses
        assert set(statuses) <= {200, 202, 503}
        for status, answer, headers in results:
            if status == 503:
                assert answer["reason"] == "duplicate_in_flight"
                assert headers["Retry-After"] == "1"
        # every loser's retry now gets the receipt
        status, again, _ = await gw.post(body)
        assert (status, again["duplicate"]) == (200, True)
    assert queued_ids(await get_all(Names(settings.broker.prefix).queue("vnaccs"))) == ["RACE-1"]
