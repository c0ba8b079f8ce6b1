"""Drills 2, 3 and 5: the gateway itself is killed, the backend flaps, the gateway is stopped.

Gateways run as real `swgw serve` processes on a private RabbitMQ node and deliver to the
backend simulator (in this test's loop); a partner process posts at a steady rate. At the
end every id answered 202 must have reached the simulator at least once; duplicate
deliveries are counted and printed (`DRILL ...` lines, run pytest with -s to see them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.broker import Names
from gateway.simulator import Simulator
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


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as s:
        yield s


def destination(sim: Simulator, **extra: Any) -> dict[str, Any]:
    """Production-shaped settings, with the clocks shortened so a drill takes seconds."""
    return {
        "health_url": f"http://127.0.0.1:{sim.port}/health",
        "timeout_s": 5,
        "concurrency": 8,
        "max_attempts": 8,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.5,
        "probe_interval_s": 0.2,
        "failure_threshold": 3,
        "slow_start_s": 1,
        "max_rate_per_s": 2000,
        **extra,
    }


class Drill:
    """One drill's processes: gateways by role, the partner load, all stopped at the end."""

    def __init__(self, node: RabbitNode, sim: Simulator, tmp_path: Path, prefix: str, **dest: Any) -> None:
        self.node, self.sim, self.tmp_path, self.prefix, self.dest = node, sim, tmp_path, prefix, dest
        self.gateways: list[GatewayProcess] = []
        self.load: LoadGen | None = None

    async def gateway(self, role: str, **server: Any) -> GatewayProcess:
        port = free_port()
        config = drill_config(
            self.tmp_path,
            self.prefix,
            self.node.url,
            port=port,
            destination_url=self.sim.url,
            destination=destination(self.sim, **self.dest),
            server=server,
        )
        gw = GatewayProcess(config, port, self.tmp_path / f"gateway-{role}-{port}.log", role=role)
        self.gateways.append(gw)
        gw.start()
        await gw.wait_ready()
        return gw

    def start_load(self, ingress: GatewayProcess, id_prefix: str, rate: float = 30) -> LoadGen:
        self.load = LoadGen(ingress.url, self.tmp_path / "load.jsonl", id_prefix=id_prefix, rate=rate)
        self.load.start()
        return self.load

    async def all_delivered(self, records: list[Record], timeout_s: float = 90) -> None:
        promised = set(accepted(records))
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    missing = promised - set(self.sim.ids)
                    if not missing:
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(
                f"{len(missing)} of {len(promised)} 202'd ids not delivered in {timeout_s:g}s: {sorted(missing)[:10]}"
            ) from None

    def tally(self, name: str, records: list[Record]) -> Tally:
        tally = Tally(name, records, [d.message_id for d in self.sim.deliveries])
        tally.report()
        assert self.sim.received.conflicts == 0, "a duplicate delivery carried different bytes"
        return tally

    def close(self) -> None:
        if self.load is not None:
            self.load.kill()
        for gw in self.gateways:
            gw.kill()


@pytest.fixture
def drill(rabbit_node: RabbitNode, sim: Simulator, tmp_path: Path, prefix: str) -> Iterable[Callable[..., Drill]]:
    made: list[Drill] = []

    def make(**dest: Any) -> Drill:
        d = Drill(rabbit_node, sim, tmp_path, prefix, **dest)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


async def inflight(gw: GatewayProcess) -> int:
    """Deliveries the process is working on now, from its /readyz destination states."""
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/readyz") as resp:
        body = await resp.json()
    return int(sum(d["inflight"] for d in body.get("destinations", {}).values()))


async def wait_inflight(gw: GatewayProcess, at_least: int = 1, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await inflight(gw) >= at_least:
                return
            await asyncio.sleep(0.05)


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


async def metric(gw: GatewayProcess, name: str) -> float:
    """Sum of a metric's samples on the process's /metrics (all label sets)."""
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


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
