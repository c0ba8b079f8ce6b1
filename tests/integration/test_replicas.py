"""Several replicas on one queue: single active consumer, take-over, and existing queues from before it.

Two gateways run in this test's loop with their own replica ids on the shared broker, each
with its own prefix per test. What is asserted is what the broker did (who was sent the
messages), waited on with deadlines, never timed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from gateway.broker.topology import GROUP_SIZE, SAC, Names, queue_arguments
from gateway.operations import replay
from gateway.runtime.app import BROKER, DELIVERY
from gateway.tools.simulator import Simulator
from tests.helpers import (
    RunningGateway,
    admin,
    config_doc,
    drop_pg_table,
    fast_destination,
    get_all,
    post_many,
    require_postgres,
    run_gateway,
    until,
    write_settings,
)

pytestmark = pytest.mark.timeout(60)


def settings_for(tmp_path: Path, prefix: str, sim: Simulator, replica: str, **broker: Any) -> Any:
    folder = tmp_path / replica
    folder.mkdir(exist_ok=True)
    doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim)], broker={"replica_id": replica, **broker})
    return write_settings(folder, doc)


def worker(gw: RunningGateway) -> Any:
    return gw.app[DELIVERY].workers["vnaccs"]


async def test_one_replica_delivers_and_the_other_takes_over_when_it_stops(
    tmp_path: Path, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    a, b = (settings_for(tmp_path, prefix, sim, r) for r in ("gw-a", "gw-b"))
    cleanup.append(a)
    async with contextlib.AsyncExitStack() as stack:
        gw_a = await stack.enter_async_context(run_gateway(a))
        async with run_gateway(b) as gw_b:
            assert worker(gw_a).consuming
            assert worker(gw_b).consuming
            ids = await post_many(gw_b, 40, "SAC")
            await until(lambda: set(ids) <= set(sim.ids), what="the first 40 delivered")
            await until(lambda: worker(gw_a).delivered_total + worker(gw_b).delivered_total == 40, what="the acks")
            delivered = {"gw-a": worker(gw_a).delivered_total, "gw-b": worker(gw_b).delivered_total}
            assert sorted(delivered.values()) == [0, 40], delivered  # ...one is sent everything
            assert worker(gw_a).active
            assert not worker(gw_b).active
            assert gw_a.metric("swgw_destination_active", {"destination": "vnaccs"}) == 1
            assert gw_b.metric("swgw_destination_active", {"destination": "vnaccs"}) == 0
            status, body = await admin(gw_a, "GET", "/admin/destinations")
            row = body["destinations"][0]
            assert status == 200
            assert row["replica"] == "gw-a"
            assert row["active"] is True
            assert row["consumer_tag"].startswith("swgw.gw-a.vnaccs.")
            _, body = await admin(gw_b, "GET", "/admin/destinations")
            assert body["destinations"][0]["active"] is False
            assert body["destinations"][0]["consuming"] is True
            await stack.aclose()  # gw-a stops: its consumer goes, gw-b's becomes the active one
            more = await post_many(gw_b, 20, "TAKEOVER")
            await until(lambda: set(more) <= set(sim.ids), what="the next 20 delivered by gw-b")
            await until(lambda: worker(gw_b).delivered_total == 20, what="gw-b's acks")
            assert worker(gw_b).delivered_total == 20
            assert worker(gw_b).active


async def declare_old_queue(url: str, prefix: str, **args: Any) -> None:
    names = Names(prefix)
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(names.queue("vnaccs"), durable=True, arguments=args)


async def test_a_queue_from_before_sac_is_used_as_it_is_with_a_warning(
    tmp_path: Path,
    prefix: str,
    cleanup: list[object],
    sim: Simulator,
    rabbit_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(tmp_path, prefix, sim, "gw-old")
    cleanup.append(settings)
    old = queue_arguments(Names(prefix), settings.destinations[0])  # what the previous version declared
    del old[SAC]
    await declare_old_queue(rabbit_url, prefix, **old)
    caplog.set_level(logging.INFO, logger="swgw.broker")
    async with run_gateway(settings) as gw:
        broker = gw.app[BROKER]
        assert broker.topology_error is None
        assert broker.ready
        assert broker.declared.without_sac == {Names(prefix).queue("vnaccs")}
        ids = await post_many(gw, 5, "OLD")
        await until(lambda: set(ids) <= set(sim.ids), what="delivery from the old queue")
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "queue_without_sac"]
    assert warnings
    assert "drain and delete the queue" in warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING


async def test_a_classic_parking_queue_from_before_is_used_as_it_is_with_a_warning(
    tmp_path: Path,
    prefix: str,
    cleanup: list[object],
    sim: Simulator,
    rabbit_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Parking queues were classic; RabbitMQ cannot redeclare one as quorum (PRECONDITION_FAILED).
    The gateway parks into, lists and replays the old queue, and says how to migrate."""
    settings = settings_for(tmp_path, prefix, sim, "gw-classic")
    cleanup.append(settings)
    parking = Names(prefix).parking("vnaccs")
    async with await aio_pika.connect(rabbit_url) as conn:  # what the previous version declared
        channel = await conn.channel()
        await channel.declare_queue(parking, durable=True, arguments={"x-queue-type": "classic"})
    await sim.set_mode("up", fail_ids=["OLDPARK-00001"], fail_status=400)
    caplog.set_level(logging.INFO, logger="swgw.broker")
    async with run_gateway(settings) as gw:
        broker = gw.app[BROKER]
        assert broker.topology_error is None
        assert broker.ready
        assert broker.declared.classic_parking == {parking}
        assert not broker.declared.unreachable
        ids = await post_many(gw, 3, "OLDPARK")  # OLDPARK-00001 is rejected: parked in the classic queue
        await until(lambda: {"OLDPARK-00000", "OLDPARK-00002"} <= set(sim.ids), what="the others delivered")
        await until(lambda: worker(gw).parker.parked_total == 1, what="the rejected one parked")
        assert [r.message_id for r in await replay.browse(settings, "vnaccs")] == ["OLDPARK-00001"]
        await sim.set_mode("up")
        report = await replay.replay(settings, "vnaccs")
        assert report.replayed == 1
        await until(lambda: set(ids) <= set(sim.ids), what="the replayed one delivered")
    assert await get_all(parking) == []
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "parking_queue_classic"]
    assert len(warnings) == 1  # once, not at every reconnect
    assert warnings[0].levelno == logging.WARNING
    assert parking in warnings[0].getMessage()
    assert "replay it until empty and delete it" in warnings[0].getMessage()


async def test_an_existing_queue_keeps_its_members_whatever_the_group_size(
    tmp_path: Path, prefix: str, cleanup: list[object], sim: Simulator, rabbit_url: str
) -> None:
    settings = settings_for(tmp_path, prefix, sim, "gw-g", quorum_initial_group_size=5)
    cleanup.append(settings)
    await declare_old_queue(rabbit_url, prefix, **queue_arguments(Names(prefix), settings.destinations[0], 1))
    try:  # does this RabbitMQ compare the argument on redeclare? 3.10 does (PRECONDITION_FAILED)
        await declare_old_queue(rabbit_url, prefix, **queue_arguments(Names(prefix), settings.destinations[0], 5))
        compared = False
    except aio_pika.exceptions.ChannelPreconditionFailed:
        compared = True
    async with run_gateway(settings) as gw:
        broker = gw.app[BROKER]
        assert broker.topology_error is None
        assert broker.ready
        assert broker.declared.members_kept == ({Names(prefix).queue("vnaccs")} if compared else set())
        assert not broker.declared.without_sac


async def test_any_other_difference_is_still_a_topology_error(
    tmp_path: Path, prefix: str, cleanup: list[object], sim: Simulator, rabbit_url: str
) -> None:
    settings = settings_for(tmp_path, prefix, sim, "gw-x")
    cleanup.append(settings)
    args = queue_arguments(Names(prefix), settings.destinations[0], 3)
    args["x-delivery-limit"] = 7  # an operator changed delivery_limit: that must not pass silently
    del args[GROUP_SIZE]
    await declare_old_queue(rabbit_url, prefix, **args)
    async with run_gateway(settings, wait_ready=False) as gw:
        broker = gw.app[BROKER]
        await until(lambda: broker.topology_error is not None, what="the topology error")
        assert "x-delivery-limit" in str(broker.topology_error)
        assert not broker.ready


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> dict[str, Any]:
    """The [dedup] table both replicas share: one SQLite file, or a PostgreSQL table of this test's own."""
    table = prefix.replace("-", "_") + "_shared"
    if request.param == "postgres":
        return {"backend": "postgres", "dsn": require_postgres(), "table": table}
    return {"backend": "sqlite", "path": str(tmp_path / "shared.sqlite3"), "table": table}


async def test_a_pause_reaches_every_replica_and_outlives_a_restart(
    tmp_path: Path, prefix: str, cleanup: list[object], sim: Simulator, store: dict[str, Any], rabbit_url: str
) -> None:
    def shared(replica: str) -> Any:
        folder = tmp_path / replica
        folder.mkdir(exist_ok=True)
        doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim)], broker={"replica_id": replica})
        doc["dedup"] = store
        return write_settings(folder, doc)

    a, b = shared("gw-a"), shared("gw-b")
    cleanup.append(a)
    try:
        async with run_gateway(a) as gw_a:
            async with run_gateway(b) as gw_b:
                status, body = await admin(gw_a, "POST", "/admin/destinations/vnaccs/pause")
                assert (status, body["scope"]) == (200, "all replicas")
                await until(  # nobody left to take the queue over
                    lambda: worker(gw_b).paused and not worker(gw_b).consuming, what="gw-b to follow gw-a's pause"
                )
                assert not worker(gw_a).consuming
                ids = await post_many(gw_b, 5, "HELD")
            async with run_gateway(b) as gw_b:  # gw-b restarted: it comes up paused, before consuming
                assert worker(gw_b).paused
                assert worker(gw_b).state == "paused"
                assert worker(gw_b)._registrations == 0  # never registered a consumer, not even briefly
                assert not set(ids) & set(sim.ids)  # held in the queue all along
                status, body = await admin(gw_b, "POST", "/admin/destinations/vnaccs/resume")
                assert status == 200
                await until(lambda: not worker(gw_a).paused, what="gw-a to follow gw-b's resume")
                await until(lambda: set(ids) <= set(sim.ids), what="the held messages delivered")
    finally:
        if store["backend"] == "postgres":
            await drop_pg_table(store["table"])  # with its control table


async def test_without_a_shared_store_a_pause_is_this_replicas_only(
    tmp_path: Path, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim)])
    doc["dedup"] = {"backend": "none"}
    settings = write_settings(tmp_path, doc)
    cleanup.append(settings)
    async with run_gateway(settings) as gw:
        status, body = await admin(gw, "POST", "/admin/destinations/vnaccs/pause")
        assert (status, body["scope"]) == (200, "this replica")
        assert worker(gw).paused


def held(w: Any) -> bool:
    """The worker's circuit is open and it holds nothing: no consumer, nothing in flight."""
    return bool(w.breaker.state.value == "open" and not w.consuming and w.inflight == 0)


async def test_an_outage_rotates_the_queue_through_the_replicas_once_and_then_both_hold(
    tmp_path: Path, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    """The circuit with SAC: the first replica opens and cancels, the queue goes to the other,
    which opens too; then both hold nothing until the backend is back. No delivery count spent."""
    a, b = (settings_for(tmp_path, prefix, sim, r) for r in ("gw-a", "gw-b"))
    cleanup.append(a)
    async with run_gateway(a) as gw_a, run_gateway(b) as gw_b:
        await sim.set_mode("down")
        ids = await post_many(gw_a, 20, "OUT")
        await until(  # the consumer is cancelled, and what was in flight handed back, just after the circuit opens
            lambda: held(worker(gw_a)) and held(worker(gw_b)),
            what="both circuits open, neither consuming nor holding anything: the backlog waits in RabbitMQ",
        )
        await sim.set_mode("up")
        await until(lambda: set(ids) <= set(sim.ids), what="everything delivered after the outage")
    assert await get_all(Names(prefix).parking("vnaccs")) == []  # nothing parked or dead-lettered
