"""Drills 2, 3 and 5: the gateway itself is killed, the backend flaps, the gateway is stopped.

Gateways run as real `swgw serve` processes on a private RabbitMQ node and deliver to the
backend simulator (in this test's loop); a partner process posts at a steady rate. At the
end every id answered 202 must have reached the simulator at least once; duplicate
deliveries are counted and printed (`DRILL ...` lines, run pytest with -s to see them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.broker.topology import Names
from gateway.tools.simulator import Simulator
from tests.drills.harness import (  # noqa: F401  (Drill, destination: where other drill modules look)
    Drill,
    accepted,
    destination,
    metric,
    now,
    started_between,
    summary,
    wait_inflight,
)
from tests.helpers import get_all

pytestmark = pytest.mark.drill


async def test_drill_2_gateway_sigkill_ingress_and_delivery(drill: Callable[..., Drill], sim: Simulator) -> None:
    d = drill()
    await sim.set_mode("slow", delay_ms=200)  # deliveries are in flight when the axe falls
    ingress = await d.gateway("ingress")
    delivery = await d.gateway("delivery")
    load = d.start_load(ingress, "D2-")
    await load.wait_until("30 accepted", lambda r: len(accepted(r)) >= 30, 30)
    await wait_inflight(delivery)

    delivery.kill()  # SIGKILL: its unacked messages go back to the queue
    delivery.start()
    await delivery.wait_ready()

    ingress.kill()  # SIGKILL mid-traffic: partners see resets and refusals, not 202s
    killed = now()
    await load.wait_until("posts fail while ingress is dead", lambda r: any(x["ts"] > killed for x in r), 10)
    ingress.start()
    await ingress.wait_ready()
    back = now()
    await load.wait_until("30 accepted after the restart", lambda r: len(accepted(r, after=back)) >= 30, 30)
    records = load.stop()

    await sim.set_mode("up")
    await d.all_delivered(records)
    tally = d.tally("2 gateway SIGKILL (delivery, then ingress)", records)
    assert not tally.lost
    assert {r["status"] for r in records} <= {202, 503, 0}, summary(records)
    assert any(r["status"] == 0 for r in started_between(records, killed, back)), "ingress was never seen dead"


async def test_drill_3_backend_flapping_during_a_drain(drill: Callable[..., Drill], sim: Simulator) -> None:
    # Drain capped at 80/s against 40/s of posts: half the time the backend is down, so the
    # backlog outlives several flaps instead of vanishing in the first "up" second.
    d = drill(max_rate_per_s=80)
    await sim.set_mode("down")  # a backlog builds up first
    gw = await d.gateway("all")
    load = d.start_load(gw, "D3-", rate=40)
    await load.wait_until("150 accepted into the backlog", lambda r: len(accepted(r)) >= 150, 30)
    await sim.set_mode("flap", flap_s=1.0)  # up 1 s, down 1 s, while draining and still taking posts
    flapping = now()
    await load.wait_until("100 more accepted while flapping", lambda r: len(accepted(r, after=flapping)) >= 100, 30)
    records = load.stop()
    await d.all_delivered(records)  # still flapping: the drain must get through the flaps by itself
    await sim.set_mode("up")

    tally = d.tally("3 backend flapping during a drain", records)
    opened = await metric(gw, "swgw_circuit_opened_total")
    print(f"circuit opened {opened:g} times, {await metric(gw, 'swgw_delivery_retries_total'):g} retries")
    assert opened >= 2, "the flaps were never felt: the drill proved nothing"
    assert not tally.lost
    assert {r["status"] for r in records} == {202}, summary(records)  # intake never notices the backend
    parked = await get_all(Names(d.prefix).parking("vnaccs"), url=d.node.url)
    assert not parked, f"{len(parked)} messages parked during a flap: {[m.message_id for m in parked][:10]}"


async def test_drill_5_sigterm_finishes_in_flight_work_and_takes_no_new(
    drill: Callable[..., Drill], sim: Simulator
) -> None:
    d = drill()
    await sim.set_mode("slow", delay_ms=1500)  # well inside timeout_s=5 and the 10 s stop bound
    gw = await d.gateway("all", request_timeout_s=5)
    load = d.start_load(gw, "D5-")
    await load.wait_until("30 accepted", lambda r: len(accepted(r)) >= 30, 30)
    await wait_inflight(gw)
    before = len(sim.deliveries)

    sigterm = now()
    code = await asyncio.to_thread(gw.terminate, 30)
    stopped = now()
    assert code == 0, gw.log_tail()
    finished = len(sim.deliveries) - before
    print(f"SIGTERM: exit 0 after {stopped - sigterm:.1f}s; {finished} in-flight deliveries finished during the stop")
    assert finished >= 1
    assert stopped - sigterm < 5 + 10 + 5  # request_timeout_s + delivery stop bound + start-up slack

    await sim.set_mode("up")
    restarting = now()
    gw.start()
    await gw.wait_ready()
    back = now()
    await load.wait_until("30 accepted after the restart", lambda r: len(accepted(r, after=back)) >= 30, 30)
    records = load.stop()
    await d.all_delivered(records)
    tally = d.tally("5 graceful SIGTERM", records)
    assert not tally.lost
    # finished work was acked before exit, so nothing came back
    assert tally.duplicates == 0
    # no new work taken once SIGTERM arrived: refused (0), never queued
    after = started_between(records, sigterm + 0.2, restarting)
    assert after, "no request was made during the stop"
    assert all(r["status"] == 0 for r in after), summary(after)
    # work in progress when SIGTERM came was answered, not dropped
    assert all(r["status"] == 202 for r in started_between(records, 0, sigterm - 0.5)), summary(records)


async def test_drill_5_sigterm_acks_nothing_it_did_not_finish(drill: Callable[..., Drill], sim: Simulator) -> None:
    d = drill(timeout_s=30)
    await sim.set_mode("slow", delay_ms=14_000)  # longer than the 10 s stop bound: nothing can finish
    gw = await d.gateway("all", request_timeout_s=2)
    load = d.start_load(gw, "D5b-")
    await load.wait_until("20 accepted", lambda r: len(accepted(r)) >= 20, 30)
    await wait_inflight(gw, at_least=8)  # every slot (concurrency 8) holds a delivery the backend sits on
    load.stop()
    sigterm = now()
    code = await asyncio.to_thread(gw.terminate, 30)
    print(f"SIGTERM: exit {code} after {now() - sigterm:.1f}s with {len(sim.deliveries)} deliveries finished")
    assert code == 0, gw.log_tail()
    records = load.records()
    promised = set(accepted(records))

    # Before the simulator wakes up: nothing was finished, so every 202'd id is back in the queue.
    assert not sim.deliveries
    queued = [m.message_id for m in await get_all(Names(d.prefix).queue("vnaccs"), url=d.node.url, ack=False)]
    assert promised <= set(queued), f"acked without finishing: {sorted(promised - set(queued))[:10]}"

    await sim.set_mode("up")
    gw.start()
    await gw.wait_ready()
    await d.all_delivered(records)
    # The 8 abandoned requests were committed by the backend after all (it woke up later), so
    # the backend sees each of them twice: the price of never acking unfinished work.
    async with asyncio.timeout(30):
        while True:
            if len(sim.deliveries) >= len(promised) + 8:
                break
            await asyncio.sleep(0.1)
    tally = d.tally("5b SIGTERM with deliveries slower than the stop bound", records)
    assert not tally.lost
    assert tally.duplicates == 8
