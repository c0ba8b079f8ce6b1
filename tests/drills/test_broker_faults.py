"""Drills 1 and 4: the broker crashes or raises a resource alarm while partners keep posting.

The gateway runs as `swgw serve --role ingress` against a private RabbitMQ node; a partner
process posts at a steady rate. The promise checked at the end: every id answered 202 is
in the destination queue (read back from the node after the drill), every other answer is
a prompt 503, and the gateway resumes by itself when the broker does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.broker.topology import Names
from tests.drills.harness import (
    GatewayProcess,
    LoadGen,
    Record,
    Tally,
    accepted,
    drill_config,
    now,
    started_between,
    summary,
)
from tests.helpers import free_port, get_all
from tests.rabbit_node import RabbitNode

pytestmark = pytest.mark.drill
CONFIRM_TIMEOUT_S = 5.0  # the production default: "quickly" below means well under this


@pytest.fixture
async def ingress(rabbit_node: RabbitNode, tmp_path: Path, prefix: str) -> AsyncIterator[GatewayProcess]:
    port = free_port()
    config = drill_config(tmp_path, prefix, rabbit_node.url, port=port, broker={"confirm_timeout_s": CONFIRM_TIMEOUT_S})
    gateway = GatewayProcess(config, port, tmp_path / "gateway.log", role="ingress")
    gateway.start()
    try:
        await gateway.wait_ready()
        yield gateway
    finally:
        gateway.kill()


async def queued_ids(node: RabbitNode, prefix: str) -> list[str]:
    return [str(m.message_id) for m in await get_all(Names(prefix).queue("vnaccs"), url=node.url)]


def count_503(records: list[Record], after: float) -> int:
    return sum(1 for r in started_between(records, after, float("inf")) if r["status"] == 503)


async def test_drill_1_broker_killed_under_load(
    rabbit_node: RabbitNode, ingress: GatewayProcess, tmp_path: Path, prefix: str
) -> None:
    load = LoadGen(ingress.url, tmp_path / "load.jsonl", id_prefix="D1-", rate=40)
    load.start()
    try:
        await load.wait_until("40 accepted before the crash", lambda r: len(accepted(r)) >= 40, 30)
        await asyncio.to_thread(rabbit_node.kill)
        killed = now()
        await load.wait_until("20 answered 503 with the broker down", lambda r: count_503(r, killed) >= 20, 30)
        restarting = now()
        took = await asyncio.to_thread(rabbit_node.start)
        back = now()
        await load.wait_until("40 accepted after the restart", lambda r: len(accepted(r, after=back)) >= 40, 60)
        records = load.stop()
    finally:
        load.kill()
    ingress.kill()
    tally = Tally("1 broker kill -9 + restart", records, await queued_ids(rabbit_node, prefix))
    tally.report()
    print(f"node restart took {took:.1f}s; gateway resumed without a restart of its own")

    assert not tally.lost, f"202'd but not queued: {tally.lost[:20]}"
    down = started_between(records, killed, restarting)
    assert down, "no request was made while the broker was down"
    assert all(r["status"] == 503 and r["reason"] == "broker_unavailable" for r in down), summary(down)
    # never a hang: every answer is a 202 or a 503, none a client timeout or a 500
    assert {r["status"] for r in records} <= {202, 503}, summary(records)


@pytest.mark.parametrize("alarm", ["memory", "disk"])
async def test_drill_4_broker_alarm_blocks_publishers(
    alarm: str, rabbit_node: RabbitNode, ingress: GatewayProcess, tmp_path: Path, prefix: str
) -> None:
    set_alarm = rabbit_node.memory_alarm if alarm == "memory" else rabbit_node.disk_alarm
    load = LoadGen(ingress.url, tmp_path / "load.jsonl", id_prefix=f"D4{alarm[0]}-", rate=30)
    load.start()
    try:
        await load.wait_until("30 accepted before the alarm", lambda r: len(accepted(r)) >= 30, 30)
        await asyncio.to_thread(set_alarm, True)
        await asyncio.to_thread(rabbit_node.wait_alarm, True)
        raised = now()
        await load.wait_until("30 answered 503 during the alarm", lambda r: count_503(r, raised) >= 30, 30)
        # what ops see during the alarm: readiness says blocked, and the gauge is up
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ingress.url}/readyz") as resp:
                detail = await resp.json()
                assert (resp.status, detail["broker"]["state"]) == (503, "blocked"), detail
            async with asyncio.timeout(10):
                while "swgw_broker_blocked 1.0" not in await (await http.get(f"{ingress.url}/metrics")).text():  # noqa: ASYNC110
                    await asyncio.sleep(0.2)  # the gauge refreshes every 2 s
        clearing = now()
        await asyncio.to_thread(set_alarm, False)
        await asyncio.to_thread(rabbit_node.wait_alarm, False)
        cleared = now()
        await load.wait_until("30 accepted after the alarm", lambda r: len(accepted(r, after=cleared)) >= 30, 30)
        records = load.stop()
    finally:
        load.kill()
        await asyncio.to_thread(set_alarm, False)  # the node is shared by the module's drills
    ingress.kill()
    tally = Tally(f"4 {alarm} alarm", records, await queued_ids(rabbit_node, prefix))
    tally.report()

    assert not tally.lost, f"202'd but not queued: {tally.lost[:20]}"
    blocked = started_between(records, raised, clearing)
    latencies = sorted(r["latency_s"] for r in blocked)
    print(
        f"alarm answers: {summary(blocked)}; latency p50 {latencies[len(latencies) // 2]:.3f}s max {latencies[-1]:.3f}s"
    )
    assert all(r["status"] == 503 for r in blocked), summary(blocked)
    # quickly, not after a confirm timeout: the gateway knows the connection is blocked
    assert all(r["reason"] == "broker_blocked" for r in blocked), summary(blocked)
    assert latencies[-1] < CONFIRM_TIMEOUT_S / 2, latencies[-10:]
    assert {r["status"] for r in records} <= {202, 503}, summary(records)
