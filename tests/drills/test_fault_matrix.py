"""The fault matrix: the whole gateway, as users run it, through the faults of real outages.

Every drill runs `python -m gateway serve` in the default role (intake and delivery in one
process) on this module's private RabbitMQ node, a partner posting from another process
(tests/drills/loadgen.py), and the backend simulator in this test's loop over loopback TCP.
At the end each drill prints one line (run pytest with -s to see it)::

    FAULT <name>: posted N, 202 N, delivered N unique, lost N, duplicates N, parked N, dead-lettered N; <figures>

and asserts, in one message listing everything that broke: lost 0 (every 202'd id reached
the backend, or sits in parking where the drill expects it), dead-lettered 0 (nothing in
parking that RabbitMQ put there by the delivery limit: an `x-death` header and no
`x-swgw-parked-reason`), parked exactly as expected (0 unless stated), plus the drill's own
findings. Duplicates are counted and printed; asserted only where stated.

No wall-clock assertion anywhere: each phase ends on a condition with a deadline (answers
seen, ids arrived, probes counted, a metric reached). Clocks are shortened through the
destination settings (`destination()` in harness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gateway.tools.simulator import Simulator
from tests.drills import queues
from tests.drills.harness import (
    Drill,
    GatewayProcess,
    Record,
    accepted,
    count_status,
    get_json,
    holds_within,
    metric_or_none,
    now,
    started_between,
    summary,
    until,
)
from tests.helpers import TcpProxy
from tests.rabbit_node import RabbitNode

pytestmark = [pytest.mark.drill, pytest.mark.timeout(240)]

SETTLE_S = 40.0  # after the fault: every 202'd id delivered or parked (old code: never)
PROBE_INTERVALS = 1_000  # drill d: the outage's length, counted in health probes


async def consuming(gw: GatewayProcess, timeout_s: float) -> str | None:
    """None once /readyz says the destination is consuming again; otherwise what it says."""
    last: dict[str, Any] | None = None

    async def check() -> bool:
        nonlocal last
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
            _, body = await get_json(f"{gw.url}/readyz")
            last = body.get("destinations", {}).get(Drill.DEST)
        # No field at all: waiting cannot help, report at once.
        return isinstance(last, dict) and (last.get("consuming") is True or "consuming" not in last)

    await holds_within(check, timeout_s, every_s=0.2)
    if isinstance(last, dict) and "consuming" not in last:
        return (
            f"/readyz destinations.{Drill.DEST} has no boolean `consuming` field "
            f"(not yet implemented: the delivery rework adds it); it says {last}"
        )
    if not (isinstance(last, dict) and last.get("consuming") is True):
        return f"/readyz does not say {Drill.DEST} is consuming {timeout_s:g}s after all was delivered: {last}"
    return None


def window(records: list[Record], start: float, end: float, expected: int) -> str | None:
    """Every request started in [start, end) was answered `expected`, and there was one."""
    during = started_between(records, start, end)
    if not during:
        return f"no request started in the fault window, so no {expected} was seen"
    if any(r["status"] != expected for r in during):
        return f"answers in the fault window were not all {expected}: {summary(during)}"
    return None


# --- a, b: the broker goes away -----------------------------------------------------------------


async def test_fault_a_broker_connection_cut_and_restored(
    drill: Callable[..., Drill], sim: Simulator, rabbit_node: RabbitNode
) -> None:
    proxy = TcpProxy(rabbit_node.port)
    await proxy.start()
    try:
        d = drill()
        gw = await d.gateway(broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        load = d.start_load(gw, "FA-", rate=30)
        await load.wait_until("30 accepted before the cut", lambda r: len(accepted(r)) >= 30, 30)
        await until("10 delivered before the cut", lambda: sim.received.unique >= 10, 30)

        await proxy.cut()  # every AMQP connection reset, new ones refused: a network blip
        cut = now()
        await load.wait_until("10 answered 503 while cut off", lambda r: count_status(r, 503, after=cut) >= 10, 30)
        await proxy.start()
        restored = now()
        await load.wait_until("30 accepted after the restore", lambda r: len(accepted(r, after=restored)) >= 30, 60)
        records = load.stop()

        missing = await d.settle(records, SETTLE_S)  # delivery must resume by itself
        not_consuming = await consuming(gw, 15)
        count = await d.count(
            "a broker connection cut and restored",
            records,
            {"503 while cut": count_status(records, 503, after=cut), "undelivered at deadline": len(missing)},
        )
        count.check(also=[not_consuming])
    finally:
        await proxy.cut()


async def test_fault_b_broker_node_killed_and_restarted(
    drill: Callable[..., Drill], sim: Simulator, rabbit_node: RabbitNode
) -> None:
    d = drill()
    gw = await d.gateway()
    load = d.start_load(gw, "FB-", rate=30)
    try:
        await load.wait_until("30 accepted before the crash", lambda r: len(accepted(r)) >= 30, 30)
        await until("10 delivered before the crash", lambda: sim.received.unique >= 10, 30)
        await asyncio.to_thread(rabbit_node.kill)  # kill -9 of the broker
        killed = now()
        await load.wait_until("10 answered 503 while down", lambda r: count_status(r, 503, after=killed) >= 10, 30)
        took = await asyncio.to_thread(rabbit_node.start)
        back = now()
        await load.wait_until("30 accepted after the restart", lambda r: len(accepted(r, after=back)) >= 30, 60)
        records = load.stop()
    finally:
        if not rabbit_node.running:  # the node is shared by the module's drills
            await asyncio.to_thread(rabbit_node.start)
    missing = await d.settle(records, SETTLE_S)
    count = await d.count(
        "b broker node killed and restarted",
        records,
        {"node restart s": round(took, 1), "undelivered at deadline": len(missing)},
    )
    count.check()


# --- c-f: the backend misbehaves ----------------------------------------------------------------


async def test_fault_c_backend_refusing_tcp(drill: Callable[..., Drill], sim: Simulator) -> None:
    d = drill()
    gw = await d.gateway()
    load = d.start_load(gw, "FC-", rate=30)
    await load.wait_until("30 accepted", lambda r: len(accepted(r)) >= 30, 30)
    await until("10 delivered", lambda: sim.received.unique >= 10, 30)

    await sim.set_mode("down")  # connection refused, new and pooled connections alike
    down = now()
    await load.wait_until("90 accepted while down", lambda r: len(accepted(r, after=down)) >= 90, 30)
    await until("a backlog of 50 held in RabbitMQ", lambda: _at_least(d.backlog(), 50), 30)
    await sim.set_mode("up")
    up = now()
    await load.wait_until("30 accepted after recovery", lambda r: len(accepted(r, after=up)) >= 30, 30)
    records = load.stop()

    await d.settle(records, SETTLE_S)
    count = await d.count("c backend refusing TCP", records)
    all_202 = None if {r["status"] for r in records} == {202} else f"intake noticed the backend: {summary(records)}"
    count.check(also=[all_202])


async def test_fault_d_health_check_lies_for_1000_probe_intervals(
    drill: Callable[..., Drill], sim: Simulator, rabbit_node: RabbitNode
) -> None:
    # Health 200, every POST 503: the load balancer in front of a dead application.
    # A small delivery limit makes any outage-driven redelivery loop visible in seconds.
    d = drill(probe_interval_s=0.01, delivery_limit=3, failure_threshold=3, max_attempts=5)
    await sim.set_mode("sick")
    gw = await d.gateway()
    load = d.start_load(gw, "FD-", rate=50, count=120)
    await load.wait_until("120 answered", lambda r: len(r) >= 120, 30)
    records = load.stop()
    backlog = len(accepted(records))
    assert backlog >= 100, f"the drill needs a backlog of 100: {summary(records)}"

    async def outage_over() -> bool:
        # Anything in parking already breaks the guarantee (old code: dead-lettered by the
        # delivery limit); no need to keep the outage going for the full count.
        return sim.health_hits >= PROBE_INTERVALS or bool(await queues.depth(rabbit_node.url, d.parking))

    await holds_within(outage_over, 120, every_s=0.25)
    probes, outage_posts = sim.health_hits, sim.post_counts
    await sim.set_mode("up")

    await d.settle(records, SETTLE_S)
    count = await d.count(
        "d health 200 while POSTs fail (sick)",
        records,
        {
            "health probes during the outage": probes,
            "POSTs during the outage": sum(outage_posts.values()),
            "max POSTs for one message during the outage": max(outage_posts.values(), default=0),
        },
    )
    short = None
    if probes < PROBE_INTERVALS:
        short = (
            f"the outage lasted only {probes} probe intervals (< {PROBE_INTERVALS}): "
            "it was ended early because messages had reached parking"
        )
    count.check(also=[short])


async def test_fault_e_slow_backend_timeouts(drill: Callable[..., Drill], sim: Simulator) -> None:
    d = drill(timeout_s=1)
    gw = await d.gateway()
    load = d.start_load(gw, "FE-", rate=30)
    await load.wait_until("30 accepted", lambda r: len(accepted(r)) >= 30, 30)
    await until("10 delivered", lambda: sim.received.unique >= 10, 30)

    # Slower than timeout_s, health check included; the backend still commits what it got.
    await sim.set_mode("slow", delay_ms=1500)
    slow = now()
    await load.wait_until("60 accepted while slow", lambda r: len(accepted(r, after=slow)) >= 60, 30)
    await until("a backlog of 30 held in RabbitMQ", lambda: _at_least(d.backlog(), 30), 30)
    await sim.set_mode("up")
    up = now()
    await load.wait_until("30 accepted after recovery", lambda r: len(accepted(r, after=up)) >= 30, 30)
    records = load.stop()

    await d.settle(records, SETTLE_S)
    count = await d.count("e slow backend (timeouts)", records, {"POSTs": sim.posts})
    count.check()


async def test_fault_f_backend_flapping_during_a_drain(drill: Callable[..., Drill], sim: Simulator) -> None:
    # Drain capped at 80/s against 40/s of posts: half the time the backend is down, so the
    # backlog outlives several flaps instead of vanishing in the first "up" second.
    d = drill(max_rate_per_s=80)
    await sim.set_mode("down")
    gw = await d.gateway()
    load = d.start_load(gw, "FF-", rate=40)
    await load.wait_until("150 accepted into the backlog", lambda r: len(accepted(r)) >= 150, 30)
    await sim.set_mode("flap", flap_s=1.0)
    flapping = now()
    await load.wait_until("100 accepted while flapping", lambda r: len(accepted(r, after=flapping)) >= 100, 30)
    records = load.stop()
    await d.settle(records, SETTLE_S)  # still flapping: the drain must get through the flaps by itself
    await sim.set_mode("up")

    opened = await metric_or_none(gw, "swgw_circuit_opened_total")
    count = await d.count("f backend flapping during a drain", records, {"circuit opened": opened})
    felt = (
        None if opened else f"the circuit never opened (swgw_circuit_opened_total {opened}): the flaps proved nothing"
    )
    count.check(also=[felt])


# --- g, h: one message fails ----------------------------------------------------------------------


async def test_fault_g_poison_message(drill: Callable[..., Drill], sim: Simulator) -> None:
    max_attempts = 5
    bound = 2 * max_attempts
    d = drill(failure_threshold=3, max_attempts=max_attempts)
    alone, among = "FGP-000000", "FG-000015"  # ids the two loads below will post
    await sim.set_mode("up", fail_ids=frozenset({alone, among}))  # 500, for as long as the drill runs
    gw = await d.gateway()

    async def parked_ids() -> list[tuple[str, str | None]]:
        return [(p.message_id, p.reason) for p in await d.parked()]

    # 1. The poison alone, the quiet hour: nothing else succeeds to tell it from an outage.
    first = d.start_load(gw, "FGP-", rate=1, count=1)
    await first.wait_until("the poison message accepted", lambda r: len(accepted(r)) == 1, 15)

    async def alone_done() -> bool:
        return sim.posts_for(alone) > bound or alone in {mid for mid, _ in await parked_ids()}

    await holds_within(alone_done, 30, every_s=0.25)
    alone_posts = sim.posts_for(alone)

    # 2. Normal traffic with a second poison message among it.
    load = d.start_load(gw, "FG-", rate=20, count=60)
    await load.wait_until("60 answered", lambda r: len(r) >= 60, 30)
    records = first.records() + load.stop()
    missing = await d.settle(records, SETTLE_S)

    posts = {p: sim.posts_for(p) for p in (alone, among)}
    count = await d.count(
        "g poison message",
        records,
        {"poison POSTs": posts, "alone POSTs before traffic": alone_posts, "undelivered": len(missing)},
        expect_parked={alone, among},
    )
    parked = await parked_ids()
    problems: list[str | None] = []
    for poison, how in ((alone, "posted alone"), (among, "among traffic")):
        mine = [reason for mid, reason in parked if mid == poison]
        if mine != ["max_attempts"]:
            problems.append(f"poison {poison} ({how}) not parked once with reason max_attempts: parked as {mine}")
        if posts[poison] > bound:
            problems.append(f"poison {poison} ({how}) POSTed {posts[poison]} times (bound 2 x max_attempts = {bound})")
    count.check(parked=2, also=problems)


async def test_fault_h_parking_queue_deleted(
    drill: Callable[..., Drill], sim: Simulator, rabbit_node: RabbitNode
) -> None:
    bound = 3
    d = drill()
    rejected = "FH-000010"
    await sim.set_mode("up", fail_ids=frozenset({rejected}), fail_status=400)  # a permanent rejection: park it
    gw = await d.gateway()
    await queues.delete(rabbit_node.url, d.parking)  # before the rejected message arrives
    load = d.start_load(gw, "FH-", rate=20, count=60)

    failures: float | None = None

    async def reported_or_looping() -> bool:
        nonlocal failures
        failures = await metric_or_none(gw, "swgw_park_failures_total")
        # The old code POSTs it ~15 times a second: 30 is "dozens", the bug shown.
        return (failures or 0) >= 2 or sim.posts_for(rejected) >= 30 or bool(await d.parked())

    await holds_within(reported_or_looping, 30, every_s=0.2)
    posts_while_missing = sim.posts_for(rejected)
    await load.wait_until("60 answered", lambda r: len(r) >= 60, 30)
    records = load.stop()

    await queues.declare_parking(rabbit_node.url, d.parking)  # the operator re-creates it
    missing = await d.settle(records, SETTLE_S)
    count = await d.count(
        "h parking queue deleted",
        records,
        {
            "POSTs of the rejected message while parking was missing": posts_while_missing,
            "POSTs of it in all": sim.posts_for(rejected),
            "swgw_park_failures_total": failures,
            "undelivered": len(missing),
        },
        expect_parked={rejected},
    )
    mine = [p.reason for p in await d.parked() if p.message_id == rejected]
    count.check(
        parked=1,
        also=[
            f"the rejected message was POSTed {posts_while_missing} times while its parking queue was missing "
            f"(bound {bound}): a failed park loops"
            if posts_while_missing > bound
            else None,
            "/metrics has no swgw_park_failures_total (not yet implemented: the delivery rework adds it), "
            "so the failed park was not reported"
            if failures is None
            else None,
            "swgw_park_failures_total stayed 0 while parking was missing" if failures == 0 else None,
            f"the rejected message is not parked exactly once with a reason: {mine}"
            if len(mine) != 1 or mine[0] is None
            else None,
        ],
    )


# --- i, j: the gateway or the broker under stress -------------------------------------------------


async def test_fault_i_gateway_sigkill_during_a_drain(drill: Callable[..., Drill], sim: Simulator) -> None:
    d = drill()
    await sim.set_mode("down")
    gw = await d.gateway()
    load = d.start_load(gw, "FI-", rate=40)
    await load.wait_until("120 accepted into the backlog", lambda r: len(accepted(r)) >= 120, 30)
    await sim.set_mode("slow", delay_ms=100)  # back, and each delivery is in flight for a moment
    await until("20 delivered: the drain is under way", lambda: sim.received.unique >= 20, 30)

    before_kill = sim.received.unique
    gw.kill()  # SIGKILL: unacked deliveries go back to the queue; partners see refusals
    killed = now()
    await load.wait_until("posts refused while dead", lambda r: count_status(r, 0, after=killed) >= 1, 10)
    gw.start()
    await gw.wait_ready()
    back = now()
    await load.wait_until("30 accepted after the restart", lambda r: len(accepted(r, after=back)) >= 30, 30)
    records = load.stop()
    await sim.set_mode("up")

    await d.settle(records, SETTLE_S)
    count = await d.count("i gateway SIGKILL during a drain", records, {"delivered before the kill": before_kill})
    count.check()


def _queue_counts(node: RabbitNode, queue: str) -> tuple[int, int] | None:
    """(ready, unacked) from rabbitmqctl: unacked counts deliveries whose ack never arrived."""
    for line in node.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return None


async def _at_least(depth: Any, n: int) -> bool:
    value = await depth
    return value is not None and value >= n


async def test_fault_j_memory_alarm_during_a_drain(
    drill: Callable[..., Drill], sim: Simulator, rabbit_node: RabbitNode
) -> None:
    d = drill()
    await sim.set_mode("down")
    gw = await d.gateway()
    load = d.start_load(gw, "FJ-", rate=30)
    await load.wait_until("90 accepted into the backlog", lambda r: len(accepted(r)) >= 90, 30)
    await until("a backlog of 60 held in RabbitMQ", lambda: _at_least(d.backlog(), 60), 30)
    counts: tuple[int, int] | None = None
    try:
        await asyncio.to_thread(rabbit_node.memory_alarm, True)
        await asyncio.to_thread(rabbit_node.wait_alarm, True)
        raised = now()
        await load.wait_until("10 answered 503 in the alarm", lambda r: count_status(r, 503, after=raised) >= 10, 30)
        before_alarm = set(accepted(load.records())) - set(accepted(load.records(), after=raised))
        await sim.set_mode("up")  # the backlog can drain now, if acks reach the broker

        async def drained() -> bool:
            nonlocal counts
            if not before_alarm <= set(sim.ids):
                return False
            counts = await asyncio.to_thread(_queue_counts, rabbit_node, d.queue)
            return counts == (0, 0)

        drained_in_alarm = await holds_within(drained, 30, every_s=0.3)
        arrived = len(before_alarm & set(sim.ids))
        if counts is None:
            counts = await asyncio.to_thread(_queue_counts, rabbit_node, d.queue)
        still_alarm = await asyncio.to_thread(rabbit_node.alarms_active)
        clearing = now()
    finally:
        await asyncio.to_thread(rabbit_node.memory_alarm, False)  # the node is shared by the module's drills
        await asyncio.to_thread(rabbit_node.wait_alarm, False)
    cleared = now()
    await load.wait_until("20 accepted after the alarm", lambda r: len(accepted(r, after=cleared)) >= 20, 30)
    records = load.stop()

    await d.settle(records, SETTLE_S)
    count = await d.count(
        "j memory alarm during a drain",
        records,
        {
            "backlog at the alarm": len(before_alarm),
            "delivered during the alarm": arrived,
            "drained in the alarm": drained_in_alarm,
            "queue (ready, unacked) at the end of the alarm": counts,
        },
    )
    count.check(
        also=[
            None
            if drained_in_alarm
            else f"the backlog did not drain while the memory alarm was active: {arrived} of {len(before_alarm)} "
            f"delivered, queue (ready, unacked) {counts}: delivery stalls while publishers are blocked",
            None
            if still_alarm
            else "the alarm cleared by itself before the drain was checked: the drill proved nothing",
            window(records, raised, clearing, 503),
        ]
    )
