"""The journal behind a running gateway, real RabbitMQ, SQLite and PostgreSQL: every 202 has a record
with its received and queued events; a publish that failed leaves none; the writer and reader are on
the app for the stages that journal and the read side."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from gateway.broker.topology import Names, queue_arguments
from gateway.journal.model import Event, EventKind, MessageFilter, Status
from gateway.journal.writer import BatchWriter, NullWriter
from gateway.runtime.app import JOURNAL, JOURNAL_READER
from gateway.settings.model import Settings
from gateway.timeutil import unix_or_none
from tests.helpers import (
    SCHEMAS,
    config_doc,
    drop_pg_table,
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
    doc = config_doc(prefix)
    if request.param == "postgres":
        doc["dedup"] = {"backend": "postgres", "dsn": require_postgres()}
    s = write_settings(tmp_path, doc)
    cleanup.append(s)
    yield s
    if request.param == "postgres":
        await drop_pg_table(s.dedup.table)


async def test_every_202_has_a_record_and_its_events_and_a_failed_publish_leaves_none(settings: Settings) -> None:
    names = Names(settings.broker.prefix)
    # Intake only: delivery journals its own attempts (tests/integration/test_journal_events.py).
    async with run_gateway(settings, role="ingress") as gw:
        reader = gw.app[JOURNAL_READER]
        body = with_message_id(BODY, "J-1")
        status, receipt, _ = await gw.post(body)
        assert status == 202, receipt
        record = await reader.message("VN-NSW", "J-1")
        assert record is not None  # written before the 202, not eventually
        assert (record.status, record.destination, record.received_at) == (
            Status.QUEUED,
            "vnaccs",
            receipt["received_at"],
        )
        assert (record.size, record.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert (record.message_type, record.attempts, record.delivered_at) == ("CUSDEC", 0, None)
        history = await reader.history("VN-NSW", "J-1")
        assert [e.kind for e in history] == [EventKind.RECEIVED, EventKind.QUEUED]
        assert history[0].at == pytest.approx(unix_or_none(receipt["received_at"]), abs=0.01)

        conn = await aio_pika.connect(settings.broker.url.reveal())
        async with conn:
            ch = await conn.channel()
            await ch.queue_delete(names.queue("vnaccs"))
            status, problem, _ = await gw.post(with_message_id(BODY, "J-2"))
            assert status == 503, problem
            assert await reader.message("VN-NSW", "J-2") is None  # nothing was promised: no record
            queue = await ch.declare_queue(
                names.queue("vnaccs"), durable=True, arguments=queue_arguments(names, settings.destinations[0])
            )
            await queue.bind(names.exchange, routing_key="vnaccs")

        writer = gw.app[JOURNAL]
        assert isinstance(writer, BatchWriter)
        await writer.record(Event(EventKind.ATTEMPT, 2e9, "VN-NSW", "J-1", "vnaccs", status=200, duration_s=0.1))
        page = await reader.search(MessageFilter(status=Status.DELIVERING))
        assert [r.message_id for r in page.records] == ["J-1"]
        writer.post(Event(EventKind.DELIVERED, 2e9 + 1, "VN-NSW", "J-1", "vnaccs", status=200))
    # the app's shutdown flushed the posted event before closing the store
    async with run_gateway(settings, role="ingress") as gw:
        record = await gw.app[JOURNAL_READER].message("VN-NSW", "J-1")
        assert record is not None
        assert (record.status, record.attempts) == (Status.DELIVERED, 1)


async def test_with_the_journal_off_the_app_has_a_writer_that_keeps_nothing_and_no_reader(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    doc = config_doc(prefix)
    doc["journal"] = {"enabled": False}
    settings = write_settings(tmp_path, doc)
    cleanup.append(settings)
    async with run_gateway(settings) as gw:
        assert isinstance(gw.app[JOURNAL], NullWriter)
        assert JOURNAL_READER not in gw.app
        status, receipt, _ = await gw.post(with_message_id(BODY, "OFF-1"))
        assert status == 202, receipt
        status, again, _ = await gw.post(with_message_id(BODY, "OFF-1"))
        assert status == 200, again  # dedup still works: the store is still there
