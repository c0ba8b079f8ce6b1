"""Drill plumbing: a gateway as a real `swgw serve` process, the partner load in another process,
the backend simulator, and the count at the end (lost = 202'd but never arrived; duplicates =
arrivals beyond one).

`Drill` ties one drill's pieces together (gateways, loads, simulator, node) and stops them
at the end; its `count()` makes the fault matrix's end-of-drill `FaultCount` (fault_count.py). Everything
waits on a condition with a deadline (`until`, `LoadGen.wait_until`); nothing sleeps a
fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.broker.topology import Names
from gateway.tools.simulator import Simulator
from tests.drills import queues

# Re-exported: drill modules import the count's helpers from here.
from tests.drills.fault_count import FaultCount as FaultCount
from tests.drills.fault_count import Record as Record
from tests.drills.fault_count import accepted as accepted
from tests.drills.fault_count import summary as summary
from tests.drills.queues import Parked
from tests.helpers import ROOT, SCHEMAS, TOKEN, config_doc, free_port, to_toml
from tests.rabbit_node import RabbitNode

TEMPLATE = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0]


def drill_config(
    tmp_path: Path,
    prefix: str,
    broker_url: str,
    *,
    port: int,
    destination_url: str = "http://127.0.0.1:9/inbound",
    destination: Mapping[str, Any] | None = None,
    broker: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
) -> Path:
    """Write a gateway.toml for a drill gateway; the dedup store is SQLite next to it."""
    doc = config_doc(
        prefix,
        broker_url=broker_url,
        server={"port": port, **(server or {})},
        broker=broker,
        destinations=[{"id": "vnaccs", "url": destination_url, **(destination or {})}],
    )
    path = tmp_path / f"gateway-{port}.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


class GatewayProcess:
    """`python -m gateway serve` in its own process: what SIGKILL and SIGTERM drills need."""

    def __init__(self, config: Path, port: int, log: Path, *, role: str = "all", workers: int = 1) -> None:
        self.config, self.port, self.log, self.role, self.workers = config, port, log, role, workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWGW_")}  # the file is the whole config
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(self.config),
                    "--role",
                    self.role,
                    "--workers",
                    str(self.workers),
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until /readyz says 200 (broker connected, schemas compiled)."""
        assert self.proc is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_tail()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(f"{self.url}/readyz") as resp:
                            if resp.status == 200:
                                return
                    await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LoadGen:
    """Drives tests/drills/loadgen.py in a child process and reads its record."""

    def __init__(
        self, url: str, out: Path, *, id_prefix: str, rate: float = 30.0, timeout_s: float = 15.0, count: int = 0
    ) -> None:
        """`count` > 0: post that many messages, then exit by itself (0: until stopped)."""
        self.out = out
        self.args = [
            sys.executable, "-m", "tests.drills.loadgen",
            "--url", f"{url}/v1/messages", "--token", TOKEN, "--template", str(TEMPLATE),
            "--out", str(out), "--id-prefix", id_prefix, "--rate", str(rate), "--timeout-s", str(timeout_s),
            "--count", str(count),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.DEVNULL)

    def records(self) -> list[Record]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # the line being written right now
                out.append(json.loads(line))
        return out

    async def wait_until(self, what: str, predicate: Callable[[list[Record]], bool], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    exited = self.proc is not None and self.proc.poll() is not None
                    if predicate(self.records()):  # read after the exit check: a finished run wrote everything
                        return
                    if exited:
                        assert self.proc is not None
                        raise RuntimeError(f"load generator exited {self.proc.returncode}: {summary(self.records())}")
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout_s:g}s; {summary(self.records())}") from None

    def stop(self, timeout_s: float = 30.0) -> list[Record]:
        """SIGTERM: no new posts, in-flight ones finish; returns the full record."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        return self.records()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Tally:
    """The end-of-drill count: what partners were promised against what arrived."""

    drill: str
    records: list[Record]
    arrived: list[str]  # every arrival, duplicates included
    promised: set[str] = field(init=False)
    lost: list[str] = field(init=False)
    duplicates: int = field(init=False)

    def __post_init__(self) -> None:
        self.promised = set(accepted(self.records))
        counts = Counter(self.arrived)
        self.lost = sorted(self.promised - set(counts))
        self.duplicates = sum(n - 1 for n in counts.values())

    def report(self) -> str:
        counts = Counter(self.arrived)
        dup_ids = sorted(i for i, n in counts.items() if n > 1)
        extra = sorted(set(counts) - self.promised)
        line = (
            f"DRILL {self.drill}: posted {len(self.records)}, 202 {len(self.promised)}, "
            f"arrived {len(self.arrived)} ({len(counts)} unique), lost {len(self.lost)}, "
            f"duplicates {self.duplicates} {dup_ids[:10]}, arrived without a 202 {len(extra)} {extra[:10]}; "
            f"answers: {summary(self.records)}"
        )
        print(line, flush=True)
        return line


def started_between(records: Iterable[Record], start: float, end: float) -> list[Record]:
    return [r for r in records if start <= r["ts"] < end]


def now() -> float:
    return time.time()


def count_status(records: Iterable[Record], status: int, *, after: float = 0.0) -> int:
    """Answers with `status` among requests started after wall-clock `after`."""
    return sum(1 for r in records if r["status"] == status and r["ts"] >= after)


Check = Callable[[], bool | Awaitable[bool]]


async def until(
    what: str, check: Check, timeout_s: float, *, every_s: float = 0.1, detail: Callable[[], str] | None = None
) -> None:
    """Poll `check` (plain or async) until it is true; AssertionError naming `what` at the deadline."""
    if not await holds_within(check, timeout_s, every_s=every_s):
        raise AssertionError(f"{what}: not within {timeout_s:g}s" + (f"; {detail()}" if detail else ""))


async def holds_within(check: Check, timeout_s: float, *, every_s: float = 0.1) -> bool:
    """Poll `check` until it is true (True) or the deadline passes (False): for drills that go on to count."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)


# --- reading a gateway process ----------------------------------------------------------------


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def metric_value(gw: GatewayProcess, name: str) -> float | None:
    """Sum of a metric's samples on the process's /metrics (all label sets); None if it has none."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"{gw.url}/metrics") as resp,
    ):
        text = await resp.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else None


async def metric(gw: GatewayProcess, name: str) -> float:
    """`metric_value`, 0 when the process has no sample of it."""
    return await metric_value(gw, name) or 0.0


async def metric_or_none(gw: GatewayProcess, name: str) -> float | None:
    """`metric_value`, or None when the process does not answer (killed, restarting, stuck)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        return await metric_value(gw, name)
    return None


async def inflight(gw: GatewayProcess) -> int:
    """Deliveries the process is working on now, from its /readyz destination states."""
    _, body = await get_json(f"{gw.url}/readyz")
    return int(sum(d["inflight"] for d in body.get("destinations", {}).values()))


async def wait_inflight(gw: GatewayProcess, at_least: int = 1, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await inflight(gw) >= at_least:
                return
            await asyncio.sleep(0.05)


# --- one drill -------------------------------------------------------------------------------


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
    """One drill's processes: gateways by role, the partner loads, all stopped at the end.

    `dest` overrides `destination()` settings of the one destination, `vnaccs`.
    """

    DEST = "vnaccs"

    def __init__(self, node: RabbitNode, sim: Simulator, tmp_path: Path, prefix: str, **dest: Any) -> None:
        self.node, self.sim, self.tmp_path, self.prefix, self.dest = node, sim, tmp_path, prefix, dest
        self.names = Names(prefix)
        self.queue, self.parking = self.names.queue(self.DEST), self.names.parking(self.DEST)
        self.gateways: list[GatewayProcess] = []
        self.loads: list[LoadGen] = []

    @property
    def load(self) -> LoadGen | None:
        return self.loads[-1] if self.loads else None

    async def gateway(
        self,
        role: str = "all",
        *,
        broker_url: str | None = None,
        broker: Mapping[str, Any] | None = None,
        **server: Any,
    ) -> GatewayProcess:
        """Start `swgw serve` (default role: intake and delivery in one process) and wait for /readyz."""
        port = free_port()
        config = drill_config(
            self.tmp_path,
            self.prefix,
            broker_url or self.node.url,
            port=port,
            destination_url=self.sim.url,
            destination=destination(self.sim, **self.dest),
            broker=broker,
            server=server,
        )
        gw = GatewayProcess(config, port, self.tmp_path / f"gateway-{role}-{port}.log", role=role)
        self.gateways.append(gw)
        gw.start()
        await gw.wait_ready()
        return gw

    def start_load(self, ingress: GatewayProcess, id_prefix: str, rate: float = 30, *, count: int = 0) -> LoadGen:
        out = self.tmp_path / f"load-{id_prefix.strip('-') or 'ids'}.jsonl"
        load = LoadGen(ingress.url, out, id_prefix=id_prefix, rate=rate, count=count)
        self.loads.append(load)
        load.start()
        return load

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

    async def parked(self) -> list[Parked]:
        return await queues.browse(self.node.url, self.parking)

    async def backlog(self) -> int | None:
        """Messages ready in the destination queue, read from the node (None: no queue)."""
        return await queues.depth(self.node.url, self.queue)

    async def settle(self, records: list[Record], timeout_s: float) -> set[str]:
        """Wait until every 202'd id has reached the simulator or sits in parking (where nothing
        moves it any more); return the ids that did neither by the deadline. Never raises: the
        count that follows says what went wrong."""
        promised = set(accepted(records))
        missing = promised

        async def settled() -> bool:
            nonlocal missing
            missing = promised - set(self.sim.ids)
            if missing and await queues.depth(self.node.url, self.parking):
                missing = missing - {p.message_id for p in await self.parked()}
            return not missing

        await holds_within(settled, timeout_s, every_s=0.25)
        return missing

    async def count(
        self,
        fault: str,
        records: list[Record],
        extra: Mapping[str, object] | None = None,
        *,
        expect_parked: Iterable[str] = (),
    ) -> FaultCount:
        """The end-of-drill count, printed as one `FAULT ...` line."""
        count = FaultCount(
            fault,
            records,
            [d.message_id for d in self.sim.deliveries],
            await self.parked(),
            frozenset(expect_parked),
            {**(extra or {}), "conflicts": self.sim.received.conflicts},
        )
        print(count.line(), flush=True)
        return count

    def tally(self, name: str, records: list[Record]) -> Tally:
        tally = Tally(name, records, [d.message_id for d in self.sim.deliveries])
        tally.report()
        assert self.sim.received.conflicts == 0, "a duplicate delivery carried different bytes"
        return tally

    def close(self) -> None:
        for load in self.loads:
            load.kill()
        for gw in self.gateways:
            gw.kill()
