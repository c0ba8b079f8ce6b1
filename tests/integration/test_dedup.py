"""Duplicate elimination through HTTP against the real RabbitMQ, with SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from gateway.broker.topology import Names, queue_arguments
from gateway.settings.model import Settings
from tests.helpers import (
    SCHEMAS,
    TcpProxy,
    config_doc,
    drop_pg_table,
    get_all,
    require_postgres,
    run_gateway,
    until,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration
BODY = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def settings(
    store: str, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> AsyncIterator[Settings]:
    async with _settings(store, tmp_path, prefix, cleanup, config_doc(prefix)) as s:
        yield s


@contextlib.asynccontextmanager
async def _settings(
    store: str, tmp_path: Path, prefix: str, cleanup: list[object], doc: dict[str, Any]
) -> AsyncIterator[Settings]:
    if store == "postgres":
        doc["dedup"] = {"backend": "postgres", "dsn": require_postgres()}
    s = write_settings(tmp_path, doc)
    cleanup.append(s)
    try:
        yield s
    finally:
        if store == "postgres":
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


# --- a MessageId reused for different content -------------------------------------------------

CORRECTED = BODY.replace(b"<SentAt>2026-03-05T14:02:11+07:00</SentAt>", b"<SentAt>2026-03-05T14:09:00+07:00</SentAt>")


def test_the_corrected_body_differs_from_the_first() -> None:
    assert CORRECTED != BODY


async def test_a_changed_body_under_an_accepted_id_is_409_and_counted_the_same_body_still_200(
    settings: Settings,
) -> None:
    first_body, changed = with_message_id(BODY, "REUSED-1"), with_message_id(CORRECTED, "REUSED-1")
    async with run_gateway(settings, role="ingress") as gw:
        status, first, _ = await gw.post(first_body)
        assert status == 202, first
        status, problem, headers = await gw.post(changed)
        assert status == 409, problem
        assert headers["Content-Type"].startswith("application/problem+json")
        assert problem["type"] == "urn:swgw:problem:message_id_reused"
        assert (problem["title"], problem["status"], problem["reason"]) == (
            "MessageId already used",
            409,
            "message_id_reused",
        )
        assert "MessageId 'REUSED-1' from 'VN-NSW' was already used for different content" in problem["detail"]
        assert first["received_at"] in problem["detail"]
        assert problem["instance"] == "/v1/messages"
        labels = {"partner": "VN-NSW", "message_type": "CUSDEC"}
        assert gw.metric("swgw_ingest_messages_total", {**labels, "outcome": "conflict"}) == 1
        assert gw.metric("swgw_ingest_messages_total", {**labels, "outcome": "rejected"}) == 0
        rejected = {**labels, "status": "409", "reason": "message_id_reused"}
        assert gw.metric("swgw_ingest_rejections_total", rejected) == 1
        status, again, _ = await gw.post(first_body)  # the same body re-sent: still the original receipt
        assert status == 200, again
        assert again == {**first, "duplicate": True}
    queued = await get_all(Names(settings.broker.prefix).queue("vnaccs"))
    assert queued_ids(queued) == ["REUSED-1"]
    assert queued[0].body == first_body  # the first message stands


async def test_simultaneous_posts_of_one_id_with_different_bodies_never_get_two_202s(settings: Settings) -> None:
    bodies = [with_message_id(BODY, "RACE-2"), with_message_id(CORRECTED, "RACE-2")]
    async with run_gateway(settings, role="ingress") as gw:
        results = await asyncio.gather(*[gw.post(bodies[i % 2]) for i in range(12)])
        statuses = [r[0] for r in results]
        assert statuses.count(202) == 1, statuses
        assert set(statuses) <= {200, 202, 409, 503}, statuses
        winner = statuses.index(202) % 2
        for i, (status, answer, _) in enumerate(results):
            if status == 503:
                assert answer["reason"] == "duplicate_in_flight"
            if status == 200:
                assert i % 2 == winner  # only the winner's body is a duplicate...
            if status == 409:
                assert i % 2 != winner  # ...and only the other body a conflict
        assert (await gw.post(bodies[winner]))[0] == 200
        assert (await gw.post(bodies[1 - winner]))[0] == 409
    queued = await get_all(Names(settings.broker.prefix).queue("vnaccs"))
    assert [m.body for m in queued] == [bodies[winner]]


# --- a confirm timeout followed by a late confirm -----------------------------------------------


class HoldingProxy(TcpProxy):
    """A loopback TCP proxy to RabbitMQ that can hold back what the broker sends (its confirms).

    `hold()`: frames from the broker are read but not passed on until `release()`, so a publish
    reaches RabbitMQ and is queued while its ack waits here: a confirm timeout on demand, on
    any machine however busy, without touching the shared broker.
    """

    def __init__(self, target_port: int = 5672) -> None:
        super().__init__(target_port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.holding_something = asyncio.Event()

    def hold(self) -> None:
        self.holding_something.clear()
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def _passing(self, *, from_target: bool) -> None:
        if from_target and not self._flowing.is_set():
            self.holding_something.set()
            await self._flowing.wait()

    async def __aenter__(self) -> HoldingProxy:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()
        await self.cut()


async def test_a_late_confirm_after_a_confirm_timeout_settles_the_claim_and_queues_the_message_once(
    store: str, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    body = with_message_id(BODY, "LATE-1")
    async with HoldingProxy() as proxy:
        doc = config_doc(
            prefix,
            broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
            broker={"confirm_timeout_s": 0.5},  # any value works: the ack is held until we release it
        )
        async with (
            _settings(store, tmp_path, prefix, cleanup, doc) as settings,
            run_gateway(settings, role="ingress") as gw,
        ):
            proxy.hold()
            status, problem, _ = await gw.post(body)
            assert status == 503, problem
            assert problem["reason"] == "broker_timeout"
            await asyncio.wait_for(proxy.holding_something.wait(), timeout=20)  # RabbitMQ has answered
            # the outcome is unknown, so the claim is kept: the partner's retry is told to come back
            status, problem, headers = await gw.post(body)
            assert status == 503, problem
            assert problem["reason"] == "duplicate_in_flight"
            assert headers["Retry-After"] == "1"
            proxy.release()  # the late ack reaches the gateway and settles the claim
            late = {"outcome": "queued"}
            await until(lambda: gw.metric("swgw_dedup_late_outcomes_total", late) == 1, what="the late ack")
            status, receipt, _ = await gw.post(body)
            assert status == 200, receipt
            assert (receipt["duplicate"], receipt["message_id"], receipt["destination"]) == (True, "LATE-1", "vnaccs")
            assert gw.metric("swgw_broker_publish_failures_total", {"reason": "timeout"}) == 1
    assert queued_ids(await get_all(Names(settings.broker.prefix).queue("vnaccs"))) == ["LATE-1"]
