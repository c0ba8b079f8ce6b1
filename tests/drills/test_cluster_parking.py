"""Parking on a three-node RabbitMQ cluster while the node leading the parking queue is dead.

A gateway (in this test's loop) gets the three node URLs. The backend rejects some ids (400),
so they must be parked. Parking queues are replicated quorum queues: with the node that leads
`<prefix>.parked.vnaccs` killed (kill -9, not restarted), the queue elects a new leader on
the two others, and a message rejected after the kill is parked (confirmed, then acked) while
the others keep being delivered: no "parking stuck". Listing and replay work through the
surviving nodes. A classic parking queue (the old design) lives on one node: with that node
dead, the rejected messages are held unacked until it returns, which fails the wait for
them here.

Every phase waits on a condition with a deadline; nothing is timed. Run with -s for the
`PARKING cluster ...` line (park failures counted while the queue elected its new leader).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.topology import Names
from gateway.operations import replay
from gateway.runtime.app import BROKER, DELIVERY
from gateway.tools.simulator import Simulator
from tests.drills.harness import until
from tests.helpers import (
    CUSDEC_BODY,
    RunningGateway,
    config_doc,
    fast_destination,
    run_gateway,
    with_message_id,
    write_settings,
)
from tests.rabbit_node import RabbitCluster, RabbitNode, RabbitNodeError

pytestmark = [pytest.mark.drill, pytest.mark.timeout(300)]

BEFORE = [f"BEFORE-{i}" for i in range(4)]
AFTER = [f"AFTER-{i:02d}" for i in range(20)]
REJECTED = ["BEFORE-1", "AFTER-02", "AFTER-07", "AFTER-13"]


@pytest.fixture
async def gateway(
    rabbit_cluster: RabbitCluster, sim: Simulator, tmp_path: Path, prefix: str
) -> AsyncIterator[RunningGateway]:
    doc = config_doc(
        prefix,
        destinations=[fast_destination("vnaccs", sim)],
        broker={"url": rabbit_cluster.urls, "quorum_initial_group_size": 3},
    )
    async with run_gateway(write_settings(tmp_path, doc)) as gw:
        yield gw


async def post_accepted(gw: RunningGateway, message_id: str, timeout_s: float = 60) -> None:
    """Post until a 202: while a queue elects a leader, partners get 503 and send again."""
    answers: list[int] = []

    async def accepted() -> bool:
        status, _, _ = await gw.post(with_message_id(CUSDEC_BODY, message_id))
        answers.append(status)
        return status == 202

    await until(f"{message_id} accepted", accepted, timeout_s, every_s=0.2, detail=lambda: f"answers {answers}")
    assert set(answers) <= {202, 503}, answers


def leading(cluster: RabbitCluster, queue: str) -> RabbitNode:
    """The node leading `queue`; a classic queue has no leader: the seed, where it was declared."""
    try:
        return cluster.leader(queue)
    except RabbitNodeError:
        return cluster.seed


async def test_with_the_parking_leader_dead_rejected_messages_are_parked_and_delivery_goes_on(
    rabbit_cluster: RabbitCluster, gateway: RunningGateway, sim: Simulator
) -> None:
    gw, cluster = gateway, rabbit_cluster
    settings = gw.settings
    worker: Any = gw.app[DELIVERY].workers["vnaccs"]
    parking = Names(settings.broker.prefix).parking("vnaccs")
    await sim.set_mode("up", fail_ids=REJECTED, fail_status=400)
    for mid in BEFORE:
        await post_accepted(gw, mid)
    await until("the first ones delivered", lambda: {"BEFORE-0", "BEFORE-2", "BEFORE-3"} <= set(sim.ids), 30)
    await until("the first rejected one parked", lambda: worker.parked_total == 1, 30)
    members = await asyncio.to_thread(cluster.members, parking)
    assert len(members) == 3, f"the parking queue is not replicated on every node: {members}"

    leader = await asyncio.to_thread(leading, cluster, parking)
    await asyncio.to_thread(leader.kill)  # not restarted in this test
    await until("the gateway ready again", lambda: gw.app[BROKER].ready, 60)
    for mid in AFTER:
        await post_accepted(gw, mid)
    others = {m for m in AFTER if m not in REJECTED}
    await until("the others delivered with the parking leader dead", lambda: others <= set(sim.ids), 60)
    await until(
        "the rejected ones parked with the parking leader dead (parking stuck?)",
        lambda: worker.parked_total == len(REJECTED),
        60,
        detail=lambda: (
            f"parked {worker.parked_total}, stuck {gw.metric('swgw_parking_stuck', {'destination': 'vnaccs'})}"
        ),
    )
    assert gw.metric("swgw_parking_stuck", {"destination": "vnaccs"}) == 0
    new_leader = await asyncio.to_thread(cluster.leader, parking)
    assert new_leader is not leader

    rows = await replay.browse(settings, "vnaccs")  # through a surviving node
    assert rows[0].message_id == "BEFORE-1"  # parked before the kill: still first
    assert sorted(r.message_id for r in rows) == sorted(REJECTED)
    await sim.set_mode("up")
    report = await replay.replay(settings, "vnaccs")
    assert [r.message_id for r in report.selected] == [r.message_id for r in rows]  # in parking order
    assert (report.replayed, report.failed) == (len(REJECTED), 0)
    await until("the replayed ones delivered", lambda: set(REJECTED) <= set(sim.ids), 60)
    assert await replay.browse(settings, "vnaccs") == []
    failures = gw.metric("swgw_park_failures_total", {"destination": "vnaccs"})
    print(f"PARKING cluster: leader {leader.name} killed; {len(REJECTED)} parked, {failures:g} park failures "
          f"while it elected {new_leader.name}; {len(set(sim.ids))} delivered, 0 lost", flush=True)  # fmt: skip
