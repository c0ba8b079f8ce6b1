"""The replica drill: two gateways on a three-node RabbitMQ cluster, through a node's, a replica's
and the backend's death, losing nothing.

Two `swgw serve` processes (default role, replica ids `replica-a` and `replica-b`) share a
PostgreSQL store (dedup and journal, a table of this test's own) and get the three node URLs.
A partner posts steadily through each of them from its own process. In order:

1. kill -9 the node that leads the destination's quorum queue (`rabbitmqctl list_queues name
   leader`); the queue, replicated on all three nodes, elects a new leader and both replicas'
   connections move to a surviving node. The node is then started again on its data and
   rejoins (parking with its leader dead: tests/drills/test_cluster_parking.py);
2. SIGKILL the replica whose consumer is the single active one (its `/admin/destinations`
   says `active`); the other replica's waiting consumer takes the queue over. The killed one
   is started again, as its supervisor would, and comes back as the waiting one;
   Then an operator pauses the destination on that replica: both replicas stop consuming
   (the pause goes through the PostgreSQL control table); a resume on the other one restarts
   delivery;
3. take the backend down (simulator mode `down`) until every replica's circuit is open, and
   bring it back.

At the end (run with -s to see them) one `FAULT replicas: ...` line with the count, and one
`REPLICAS ...` line with, for each fault, the seconds to the next successful delivery (for
the replica kill: the next one by the surviving replica) and to the delivery of the first
message accepted after the fault. Asserted:
every 202'd id reached the backend (lost 0), nothing parked or dead-lettered; duplicates are
counted and printed, not asserted (a node or replica killed mid-POST delivers again). No
wall-clock assertion: every phase ends on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.tools.simulator import Simulator
from tests.drills import queues
from tests.drills.cluster import Replicas, figures
from tests.drills.harness import FaultCount, accepted, holds_within, until
from tests.helpers import require_postgres
from tests.rabbit_node import RabbitCluster

pytestmark = [pytest.mark.drill, pytest.mark.timeout(300)]

RATE = 12.0  # messages per second through each replica
A, B = "replica-a", "replica-b"


@pytest.fixture
async def replicas(
    rabbit_cluster: RabbitCluster, sim: Simulator, tmp_path: Path, prefix: str
) -> AsyncIterator[Replicas]:
    r = Replicas(rabbit_cluster, sim, tmp_path, prefix, require_postgres())
    yield r
    await r.close()


async def test_replicas_on_a_cluster_lose_nothing_through_node_replica_and_backend_faults(
    replicas: Replicas, sim: Simulator
) -> None:
    r, cluster = replicas, replicas.cluster
    times: dict[str, tuple[float, float]] = {}  # fault: (next delivery, first post-fault message delivered)
    await r.start(A, B)
    loads = [r.load(A, RATE), r.load(B, RATE)]
    await until("steady delivery through both replicas", lambda: len(sim.ids) >= 40, 60)
    members = await asyncio.to_thread(cluster.members, r.queue)
    assert len(members) == 3, f"the destination queue is not replicated on every node: {members}"

    # 1. the queue's leader node dies
    leader = await asyncio.to_thread(cluster.leader, r.queue)
    seen, at = len(sim.deliveries), time.time()
    await asyncio.to_thread(leader.kill)
    try:
        await r.next_delivery("after the leader node's death", 60, after=seen)
    except AssertionError:  # what the broker says about the queue, for whoever reads the failure
        print("QUEUE", await asyncio.to_thread(cluster.describe, r.queue), flush=True)
        raise
    nxt = time.time() - at  # from before the kill: kill() returns once the node's port refuses
    new = await r.first_accepted_after("after the leader node's death", at, 60)
    times["leader node killed"] = (nxt, new)
    await until("a new leader", lambda: asyncio.to_thread(lambda: cluster.leader(r.queue) is not leader), 60)
    await until("both replicas ready again", lambda: _all_ready(r, A, B), 60)
    steady = len(sim.ids)
    await until("delivery steady again", lambda: len(sim.ids) >= steady + 30, 60)
    await asyncio.to_thread(leader.start)  # back on its data: it rejoins
    await asyncio.to_thread(cluster.wait_members, 3)

    # 2. the replica delivering dies
    await until("exactly one active replica", lambda: _one_active(r), 30)
    victim = (await r.active())[0]
    other = B if victim == A else A
    before, at = await r.delivered_by(other), time.time()
    r.gateways[victim].kill()  # its last POSTs may still land: the next delivery counted is the other's
    await until(f"{other} delivers", lambda: _more(r, other, before), 60, every_s=0.02)
    nxt = time.time() - at
    times["active replica killed"] = (nxt, await r.first_accepted_after(f"after {victim} was killed", at, 60))
    await until(f"{other} is the active one", lambda: _active_is(r, other), 30)
    await r.start(victim)  # back, as its supervisor would start it: it waits behind the active one
    steady = len(sim.ids)
    await until("delivery steady again", lambda: len(sim.ids) >= steady + 30, 60)
    assert await r.active() == [other], "the restarted replica took the queue from the active one"

    # an operator pauses the destination on one replica: both stop; resumed on the other: delivery goes on
    assert (await r.admin_post(victim, "/admin/destinations/vnaccs/pause"))["scope"] == "all replicas"
    await until("both replicas paused, neither consuming", lambda: _all_paused(r, A, B), 30)
    seen, at = len(sim.deliveries), time.time()
    await r.admin_post(other, "/admin/destinations/vnaccs/resume")
    await r.next_delivery("after the resume", 30, after=seen)
    times["resumed on the other replica"] = (time.time() - at, await r.first_accepted_after("after the resume", at, 30))

    # 3. the backend goes down, then comes back
    await sim.set_mode("down")
    await until("every replica's circuit open", lambda: _all_open(r, A, B), 60)
    seen, at = len(sim.deliveries), time.time()
    await sim.set_mode("up")
    nxt = await r.next_delivery("after the backend came back", 60, after=seen)
    times["backend back up"] = (nxt, await r.first_accepted_after("after the backend came back", at, 60))

    records = [rec for load in loads for rec in load.stop()]
    promised = set(accepted(records))
    delivered_all = await holds_within(lambda: promised <= set(sim.ids), 90, every_s=0.25)
    parked = await queues.browse(leader.url, r.names.parking("vnaccs"))
    count = FaultCount(
        "replicas", records, [d.message_id for d in sim.deliveries], parked, frozenset(),
        {"conflicts": sim.received.conflicts, "delivered in time": delivered_all},
    )  # fmt: skip
    print(count.line(), flush=True)
    print(f"REPLICAS fault -> next delivery: {figures(times)}", flush=True)
    count.check(parked=0)


async def _all_ready(r: Replicas, *replicas: str) -> bool:
    return all([await r.ready(x) for x in replicas])


async def _one_active(r: Replicas) -> bool:
    return len(await r.active()) == 1


async def _active_is(r: Replicas, replica: str) -> bool:
    return await r.active() == [replica]


async def _more(r: Replicas, replica: str, than: int) -> bool:
    return await r.delivered_by(replica) > than


async def _all_paused(r: Replicas, *replicas: str) -> bool:
    rows = [await r.rows(x) for x in replicas]
    return all(row is not None and row["paused"] and not row["consuming"] for row in rows)


async def _all_open(r: Replicas, *replicas: str) -> bool:
    rows = [await r.rows(x) for x in replicas]
    return all(row is not None and row["circuit"] == "open" for row in rows)
