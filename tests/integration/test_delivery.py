"""Delivery against the real RabbitMQ and the backend simulator over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker.topology import Names
from gateway.messages import QueuedMessage
from gateway.runtime.app import DELIVERY
from gateway.tools.simulator import Simulator
from tests.helpers import CUSDEC_BODY as BODY
from tests.helpers import (
    TOKEN,
    RunningGateway,
    admin,
    config_doc,
    fast_destination,
    get_all,
    post_many,
    run_gateway,
    until,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration


async def test_delivers_original_bytes_with_dedup_headers_and_acks(gw: RunningGateway, sim: Simulator) -> None:
    status, _receipt, _ = await gw.post(with_message_id(BODY, "D-1"))
    assert status == 202
    await sim.wait_for(1, timeout_s=15)
    delivery = sim.deliveries[0]
    assert delivery.message_id == "D-1"
    assert delivery.message_type == "CUSDEC"
    assert delivery.sender == "VN-NSW"
    assert delivery.attempt == "1"
    assert delivery.sha256 == __import__("hashlib").sha256(with_message_id(BODY, "D-1")).hexdigest()
    worker = gw.app[DELIVERY].workers["vnaccs"]
    await until(lambda: worker.delivered_total == 1 and worker.inflight == 0, what="ack")
    assert await get_all(Names(gw.settings.broker.prefix).queue("vnaccs"), ack=False) == []
    assert gw.metric("swgw_deliveries_total", {"destination": "vnaccs", "outcome": "delivered"}) == 1
    assert gw.metric("swgw_end_to_end_seconds_count", {"destination": "vnaccs"}) == 1


async def test_transient_5xx_is_retried_honouring_retry_after_then_delivered(
    gw: RunningGateway, sim: Simulator
) -> None:
    await sim.set_mode("error", status=503, retry_after="0")
    await gw.post(with_message_id(BODY, "R-1"))
    await until(
        lambda: gw.metric("swgw_delivery_retries_total", {"destination": "vnaccs"}) >= 1,
        what="a failed attempt and a scheduled retry",
    )
    await sim.set_mode("up")
    await sim.wait_for(1, timeout_s=15)
    assert sim.ids == ["R-1"]
    assert int(sim.deliveries[0].attempt) >= 2  # the same message, a later attempt
    assert gw.app[DELIVERY].workers["vnaccs"].state == "closed"


async def test_rejected_message_is_parked_with_reason_then_replayed(
    gw: RunningGateway, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    await sim.set_mode("reject", reject_types=["CUSDEC"])
    await post_many(gw, 5, "P")
    worker = gw.app[DELIVERY].workers["vnaccs"]
    await until(lambda: worker.parked_total == 5, what="5 parked")
    # the line ops read: which message, from whom, of what type, why
    parked_logs = [r for r in caplog.records if getattr(r, "event", None) == "parked"]
    assert {r.message_id for r in parked_logs} == {f"P-{i:05d}" for i in range(5)}  # type: ignore[attr-defined]
    first = parked_logs[0].__dict__
    assert (first["partner"], first["message_type"], first["destination"], first["reason"], first["status"]) == (
        "VN-NSW",
        "CUSDEC",
        "vnaccs",
        "rejected",
        400,
    )
    assert sim.ids == []

    status, listing = await admin(gw, "GET", "/admin/destinations/vnaccs/parked")
    assert status == 200
    rows = listing["parked"]
    assert sorted(r["message_id"] for r in rows) == [f"P-{i:05d}" for i in range(5)]
    assert {r["reason"] for r in rows} == {"rejected"}
    assert {r["status"] for r in rows} == {400}
    assert all(r["excerpt"] for r in rows)
    # listing consumed nothing
    parked = await get_all(Names(gw.settings.broker.prefix).parking("vnaccs"), ack=False)
    assert len(parked) == 5
    assert parked[0].body == with_message_id(BODY, "P-00000")  # body byte-identical
    q = QueuedMessage.from_amqp(parked[0])
    assert q.parking is not None
    assert q.parking.attempts == 1

    status, dry = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={"dry_run": True})
    assert status == 200
    assert dry["dry_run"] is True
    assert len(dry["messages"]) == 5
    assert sim.ids == []

    await sim.set_mode("up")  # the backend is fixed
    status, report = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={"message_id": "P-00002"})
    assert (status, report["replayed"], report["skipped"]) == (200, 1, 4)
    await sim.wait_for(1, timeout_s=15)
    assert sim.ids == ["P-00002"]
    status, report = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={"rate": 100})
    assert report["replayed"] == 4
    await sim.wait_for(5, timeout_s=15)
    assert sorted(sim.ids) == [f"P-{i:05d}" for i in range(5)]
    assert gw.metric("swgw_replayed_messages_total", {"destination": "vnaccs", "outcome": "replayed"}) == 5


async def test_a_message_failing_alone_is_an_outage_not_poison_it_waits_and_is_never_parked(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    # Every POST fails and no other message gets through: the gateway cannot tell this from
    # an outage, so the message must wait (circuit open, in its queue), never be parked.
    doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim, failure_threshold=100, max_attempts=3)])
    settings = write_settings(tmp_path, doc)
    cleanup.append(settings)
    await sim.set_mode("error", status=500)
    async with run_gateway(settings) as gw:
        await gw.post(with_message_id(BODY, "X-1"))
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await until(lambda: worker.breaker.state.value == "open", what="circuit opened after max_attempts alone")
        await until(lambda: worker.inflight == 0, what="message handed back to its queue")
        queued = await get_all(Names(prefix).queue("vnaccs"), ack=False)
        # The health check said down when its attempts ran out: they were the outage's, not its
        # own, so it waits with the count it came with (a flapping backend parked healthy
        # messages when they kept these: tests/unit/delivery/test_charging.py)
        assert [QueuedMessage.from_amqp(m).attempts for m in queued] == [0]
        assert worker.parked_total == 0
        await sim.set_mode("up")
        await sim.wait_for(1, timeout_s=20)
        await until(lambda: worker.delivered_total == 1, what="delivered after recovery")
    assert sim.ids == ["X-1"]
    assert not await get_all(Names(prefix).parking("vnaccs"), ack=False)


async def test_admin_api_needs_the_admin_token_and_pauses(gw: RunningGateway, sim: Simulator) -> None:
    status, _ = await admin(gw, "GET", "/admin/destinations", token=TOKEN)  # a partner token
    assert status == 401
    status, body = await admin(gw, "GET", "/admin/destinations")
    assert status == 200
    assert body["destinations"][0]["id"] == "vnaccs"
    assert body["destinations"][0]["state"] == "closed"

    status, body = await admin(gw, "POST", "/admin/destinations/vnaccs/pause")
    assert (status, body["state"]) == (200, "paused")
    await post_many(gw, 3, "PA")
    await until(lambda: gw.app[DELIVERY].broker.depths.get("vnaccs", (0, 0))[0] == 3, what="backlog of 3")
    assert sim.ids == []
    status, body = await admin(gw, "POST", "/admin/destinations/vnaccs/resume")
    assert status == 200
    await sim.wait_for(3, timeout_s=15)
    status, _ = await admin(gw, "GET", "/admin/destinations/nope/parked")
    assert status == 404


async def test_one_destination_down_does_not_slow_another(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    async with Simulator() as down, Simulator() as up:
        await down.set_mode("down")
        doc = config_doc(
            prefix,
            destinations=[fast_destination("dead", down), fast_destination("alive", up)],
            routes=[
                {"to": "VN-VNACCS", "message_type": "CUSDEC", "destination": "dead"},
                {"to": "VN-OTHER", "message_type": "CUSDEC", "destination": "alive"},
            ],
        )
        settings = write_settings(tmp_path, doc)
        cleanup.append(settings)
        async with run_gateway(settings) as gw:
            for i in range(50):
                await gw.post(with_message_id(BODY, f"DEAD-{i}"))
            for i in range(50):
                body = with_message_id(BODY, f"ALIVE-{i}").replace(b"<To>VN-VNACCS</To>", b"<To>VN-OTHER</To>")
                status, _, _ = await gw.post(body)
                assert status == 202
            await up.wait_for(50, timeout_s=15)
            dead = gw.app[DELIVERY].workers["dead"]
            await until(lambda: dead.state == "open", what="dead circuit open")
            assert gw.app[DELIVERY].workers["alive"].state == "closed"
