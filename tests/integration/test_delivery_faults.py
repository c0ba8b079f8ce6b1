"""Delivery under faults, in-process (fast feedback; the drills in tests/drills run the same as processes).

Each test is one bug the old worker had: it fails against the old code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pytest

from gateway.broker.topology import PARKING_ARGUMENTS, Names
from gateway.messages import QueuedMessage
from gateway.runtime.app import DELIVERY
from gateway.tools.simulator import Simulator
from tests.helpers import (
    RABBIT_URL,
    TcpProxy,
    config_doc,
    fast_destination,
    get_all,
    post_many,
    run_gateway,
    until,
    write_settings,
)

pytestmark = pytest.mark.integration


async def test_delivery_resumes_after_the_broker_connection_drops(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    doc = config_doc(
        prefix, broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", destinations=[fast_destination("vnaccs", sim)]
    )
    settings = write_settings(tmp_path, doc)
    cleanup.append(settings)
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await post_many(gw, 5, "R1")
        await sim.wait_for(5, timeout_s=20)
        for round_ in range(3):  # every reconnect, not only the first
            await proxy.cut()
            await until(lambda: not worker.consuming, what="consumer gone with the connection")
            await proxy.start()  # the broker is back on the same address
            await until(lambda: worker.consuming, timeout_s=30, what=f"consuming again after reconnect {round_}")
            wanted = set(await _post_when_ready(gw, 5, f"R{round_ + 2}"))
            await until(lambda w=wanted: w <= set(sim.ids), timeout_s=30, what="delivered after reconnect")
        assert worker.state == "closed"
    await proxy.cut()


async def _post_when_ready(gw, n: int, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Intake reconnects on its own schedule: post until all n are accepted."""
    from tests.helpers import CUSDEC_BODY, with_message_id

    ids = [f"{prefix}-{i}" for i in range(n)]
    for mid in ids:
        async with asyncio.timeout(30):
            while (await gw.post(with_message_id(CUSDEC_BODY, mid)))[0] != 202:  # noqa: ASYNC110 - HTTP retries
                await asyncio.sleep(0.1)
    return ids


async def test_a_lying_health_check_costs_no_delivery_count_however_long(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    # delivery_limit 2: the old worker dead-lettered every message after a few half-open cycles.
    dest = fast_destination("vnaccs", sim, probe_interval_s=0.01, delivery_limit=2, concurrency=4)
    settings = write_settings(tmp_path, config_doc(prefix, destinations=[dest]))
    cleanup.append(settings)
    await sim.set_mode("sick", status=503)  # /health says 200, every POST fails
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        ids = await post_many(gw, 30, "L")
        await until(lambda: sim.health_hits >= 300, timeout_s=90, what="300 probe intervals of a lying health check")
        assert worker.breaker.state.value in ("open", "half_open")
        assert worker.parked_total == 0
        assert not await get_all(Names(prefix).parking("vnaccs"), ack=False), "dead-lettered or parked by an outage"
        await sim.set_mode("up")
        await until(lambda: set(ids) <= set(sim.ids), timeout_s=60, what="all delivered after recovery")
    assert not await get_all(Names(prefix).parking("vnaccs"), ack=False)


async def test_a_poison_message_is_parked_and_does_not_hold_up_the_others(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    dest = fast_destination("vnaccs", sim, failure_threshold=3, max_attempts=5, concurrency=4)
    settings = write_settings(tmp_path, config_doc(prefix, destinations=[dest]))
    cleanup.append(settings)
    await sim.set_mode("up", fail_ids=["P-00003"], fail_status=500)
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        ids = await post_many(gw, 40, "P")
        await until(lambda: worker.parked_total == 1, timeout_s=60, what="the poison message parked")
        await until(lambda: set(ids) - {"P-00003"} <= set(sim.ids), timeout_s=60, what="the others delivered")
    parked = [QueuedMessage.from_amqp(m) for m in await get_all(Names(prefix).parking("vnaccs"), ack=False)]
    assert [(m.message_id, m.parking.reason if m.parking else None) for m in parked] == [("P-00003", "max_attempts")]
    assert sim.posts_for("P-00003") <= 2 * 5


async def test_a_failed_park_holds_the_message_instead_of_posting_it_in_a_loop(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    dest = fast_destination("vnaccs", sim)
    settings = write_settings(tmp_path, config_doc(prefix, destinations=[dest]))
    cleanup.append(settings)
    names = Names(prefix)
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        conn = await aio_pika.connect(RABBIT_URL)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(names.parking("vnaccs"))
            await sim.set_mode("up", fail_ids=["K-00000"], fail_status=400)  # rejected: must be parked
            await post_many(gw, 1, "K")
            await until(lambda: gw.metric("swgw_park_failures_total", {"destination": "vnaccs"}) >= 3, timeout_s=30,
                        what="three failed parks")  # fmt: skip
            assert sim.posts_for("K-00000") == 1, "re-POSTed a message the backend had rejected"
            assert worker.state == "parking_stuck"
            assert not worker.consuming
            assert gw.metric("swgw_parking_stuck", {"destination": "vnaccs"}) == 1
            await channel.declare_queue(names.parking("vnaccs"), durable=True, arguments=PARKING_ARGUMENTS)
            await until(lambda: worker.parked_total == 1, timeout_s=60, what="parked once the queue is back")
            await until(lambda: worker.consuming, what="consuming again")
            await sim.set_mode("up")
            more = await post_many(gw, 3, "K2")
            await until(lambda: set(more) <= set(sim.ids), what="the next messages delivered")
        assert sim.posts_for("K-00000") == 1
    parked = await get_all(names.parking("vnaccs"), ack=False)
    assert [m.message_id for m in parked] == ["K-00000"]
