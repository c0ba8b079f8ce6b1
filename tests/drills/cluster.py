"""The replica drill's plumbing: gateway replicas on a three-node RabbitMQ cluster and PostgreSQL.

`Replicas` runs `swgw serve` (default role) as separate processes, each given the three node
URLs, its own `[broker] replica_id` and the same PostgreSQL table (dedup + journal, unique
per test, dropped afterwards), and a partner load through each. It answers the questions the
drill asks while faults happen: which replica is delivering (`active()`, from each replica's
`/admin/destinations`), and how long from a fault to the next successful delivery
(`next_delivery()`, counting the simulator's arrivals). Nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from gateway.broker.topology import Names
from gateway.tools.simulator import Simulator
from tests.drills.harness import GatewayProcess, LoadGen, accepted, destination, get_json
from tests.helpers import ADMIN_TOKEN, config_doc, drop_pg_table, free_port, to_toml
from tests.rabbit_node import RabbitCluster

DEST = "vnaccs"


class Replicas:
    """Gateway replicas of one drill on `cluster`, with the store at `dsn` in table `table`."""

    def __init__(
        self, cluster: RabbitCluster, sim: Simulator, tmp_path: Path, prefix: str, dsn: str, **dest: Any
    ) -> None:
        self.cluster, self.sim, self.tmp_path, self.prefix = cluster, sim, tmp_path, prefix
        self.names = Names(prefix)
        self.queue = self.names.queue(DEST)
        self.table = prefix.replace("-", "_") + "_store"
        self.dsn, self.dest = dsn, dest
        self.gateways: dict[str, GatewayProcess] = {}
        self.loads: list[LoadGen] = []

    def config(self, replica: str, port: int) -> Path:
        doc = config_doc(
            self.prefix,
            server={"port": port},
            broker={"url": self.cluster.urls, "replica_id": replica, "connect_timeout_s": 2},
            destinations=[{"id": DEST, "url": self.sim.url, **destination(self.sim, **self.dest)}],
        )
        doc["dedup"] = {"backend": "postgres", "dsn": self.dsn, "table": self.table}
        path = self.tmp_path / f"{replica}.toml"
        path.write_text(to_toml(doc), encoding="utf-8")
        return path

    async def start(self, *replicas: str) -> None:
        """Start (or restart, on the same port) each replica and wait for all of them to be ready."""
        for replica in replicas:
            gw = self.gateways.get(replica)
            if gw is None:
                port = free_port()
                gw = GatewayProcess(self.config(replica, port), port, self.tmp_path / f"{replica}.log")
                self.gateways[replica] = gw
            gw.start()
        await asyncio.gather(*(self.gateways[r].wait_ready(timeout_s=60) for r in replicas))

    def load(self, replica: str, rate: float) -> LoadGen:
        gw = self.gateways[replica]
        load = LoadGen(gw.url, self.tmp_path / f"load-{replica}.jsonl", id_prefix=f"{replica}-", rate=rate)
        self.loads.append(load)
        load.start()
        return load

    async def rows(self, replica: str) -> dict[str, Any] | None:
        """This replica's `/admin/destinations` row for the destination; None if it does not answer."""
        gw = self.gateways[replica]
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
                http.get(f"{gw.url}/admin/destinations", headers=headers) as resp,
            ):
                body = await resp.json(content_type=None)
                return next(r for r in body["destinations"] if r["id"] == DEST)  # type: ignore[no-any-return]
        return None

    async def admin_post(self, replica: str, path: str) -> dict[str, Any]:
        """POST an admin action to one replica; its JSON answer (AssertionError unless 200)."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(f"{self.gateways[replica].url}{path}", headers=headers) as resp,
        ):
            body = await resp.json(content_type=None)
            assert resp.status == 200, body
            return body  # type: ignore[no-any-return]

    async def active(self) -> list[str]:
        """The replicas whose consumer is the queue's active one (it has been sent messages)."""
        out = []
        for replica, gw in self.gateways.items():
            if gw.proc is not None and gw.proc.poll() is None:
                row = await self.rows(replica)
                if row is not None and row.get("active"):
                    out.append(replica)
        return out

    async def ready(self, replica: str) -> bool:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            status, _ = await get_json(f"{self.gateways[replica].url}/readyz")
            return status == 200
        return False

    async def next_delivery(self, what: str, timeout_s: float, *, after: int | None = None) -> float:
        """Seconds until the simulator has one more successful delivery than `after` (default: now)."""
        seen = len(self.sim.deliveries) if after is None else after
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                while True:  # polled: the simulator's list has no event to wait on
                    if len(self.sim.deliveries) > seen:
                        break
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"{what}: no delivery within {timeout_s:g}s") from None
        return time.monotonic() - started

    async def first_accepted_after(self, what: str, since: float, timeout_s: float) -> float:
        """Seconds from wall-clock `since` until a message 202'd after it has reached the backend."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:  # polled: the load's record is a file, the simulator's a list
                    fresh = set(accepted([rec for load in self.loads for rec in load.records()], after=since))
                    if fresh & set(self.sim.ids):
                        return time.time() - since
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{what}: no message accepted since then delivered in {timeout_s:g}s") from None

    async def delivered_by(self, replica: str) -> int:
        row = await self.rows(replica)
        return int(row["delivered_total"]) if row else -1

    async def close(self) -> None:
        for load in self.loads:
            load.kill()
        for gw in self.gateways.values():
            gw.kill()
        await drop_pg_table(self.table, self.dsn)  # with its events and control tables


def figures(times: Mapping[str, tuple[float, float]]) -> str:
    """`fault: next delivery N s, first message accepted after it delivered M s` for each fault."""
    return "; ".join(
        f"{fault}: next delivery {nxt:.2f}s, first post-fault message delivered {new:.2f}s"
        for fault, (nxt, new) in times.items()
    )
