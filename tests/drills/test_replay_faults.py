"""Replay drills: two replays of one destination at once, and a replay killed
with SIGKILL half-way, against the whole gateway as users run it.

The gateway is `swgw serve` (default role) on a private RabbitMQ node, delivering to the
backend simulator in this test's loop. The simulator first rejects CUSDEC (400), so every
posted message is parked; then it is "fixed" and replays run as ops run them: `python -m
gateway replay` in processes of their own and `POST /admin/destinations/vnaccs/replay` on
the gateway. Messages come from two partners, interleaved, and each replay selects one of
them (`--from VN-NSW`), so the replay both moves messages and leaves others in place.

At the end the drill counts: every selected id delivered (exactly once when nothing crashed),
every other id still parked exactly once and in its original order, no id parked twice. After
a replay is killed, the others are parked once each but not in order: parking is a quorum
queue, which puts the messages a dead reader held behind the rest (RabbitMQ 3.10 also shuffles
them; gateway/operations/giveback.py). Everything waits on conditions with deadlines; nothing
sleeps a fixed time or asserts a duration. A replay is made long enough to overlap with
another by its `--rate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiohttp
import aiormq.exceptions
import pytest

from gateway.operations.replay import lock_name
from gateway.tools.simulator import Simulator
from tests.drills import queues
from tests.drills.harness import TEMPLATE, Check, Drill, GatewayProcess, destination, holds_within
from tests.helpers import ADMIN_TOKEN, OTHER_TOKEN, ROOT, TOKEN, config_doc, free_port, sha, to_toml, with_message_id

pytestmark = pytest.mark.drill

SELECTED, OTHER = "VN-NSW", "TH-NSW"
TOKENS = {SELECTED: TOKEN, OTHER: OTHER_TOKEN}
REFUSED = 3  # `swgw replay` exit code: another replay of the destination is running (gateway/cli.py)


@dataclass
class Outcome:
    """How one replay ended: `who` ("cli-1", "admin"...), its exit code or HTTP status, its words."""

    who: str
    code: int
    text: str


class ReplayDrill:
    """One gateway with two partners sending CUSDEC to `vnaccs`, and the replays started against it."""

    def __init__(self, drill: Drill) -> None:
        self.d = drill
        self.sim: Simulator = drill.sim
        port = free_port()
        doc = config_doc(
            drill.prefix,
            broker_url=drill.node.url,
            server={"port": port},
            partners=[
                {"id": p, "token_sha256": [sha(t)], "rate_per_s": 1000.0, "burst": 1000} for p, t in TOKENS.items()
            ],
            destinations=[{"id": "vnaccs", "url": self.sim.url, **destination(self.sim)}],
        )
        self.config = drill.tmp_path / f"gateway-{port}.toml"
        self.config.write_text(to_toml(doc), encoding="utf-8")
        self.gw = GatewayProcess(self.config, port, drill.tmp_path / f"gateway-{port}.log")
        drill.gateways.append(self.gw)  # killed by the fixture whatever happens
        self.procs: list[asyncio.subprocess.Process] = []
        self.ids: list[str] = []

    async def start_with_parked(self, n: int) -> None:
        """Start the gateway and get `n` messages parked (rejected by the backend), senders alternating."""
        self.gw.start()
        await self.gw.wait_ready()
        await self.sim.set_mode("reject", reject_types=["CUSDEC"])
        template = TEMPLATE.read_bytes()
        async with aiohttp.ClientSession() as session:
            for i in range(n):
                sender = SELECTED if i % 2 == 0 else OTHER
                mid = f"RP-{sender[:2]}-{i:03d}"
                body = with_message_id(template, mid).replace(b"<From>VN-NSW</From>", f"<From>{sender}</From>".encode())
                headers = {"Authorization": f"Bearer {TOKENS[sender]}", "Content-Type": "application/xml"}
                async with session.post(f"{self.gw.url}/v1/messages", data=body, headers=headers) as resp:
                    assert resp.status == 202, await resp.text()
                self.ids.append(mid)
        await self.until(f"{n} parked", lambda: self.parked_count(n))
        await self.sim.set_mode("up")  # the backend is fixed: time to replay

    @property
    def selected(self) -> list[str]:
        return [i for i in self.ids if i.startswith("RP-VN")]

    @property
    def others(self) -> list[str]:
        return [i for i in self.ids if i.startswith("RP-TH")]

    async def parked_count(self, n: int) -> bool:
        return await queues.depth(self.d.node.url, self.d.parking) == n

    async def parked(self) -> list[str]:
        return [p.message_id for p in await self.d.parked()]

    async def until(self, what: str, check: Check, timeout_s: float = 60) -> None:
        async def detail() -> str:
            return f"parked {len(await self.parked())}, delivered {len(self.sim.ids)}"

        if not await holds_within(check, timeout_s, every_s=0.05):
            raise AssertionError(f"{what}: not within {timeout_s:g}s; {await detail()}\n{self.gw.log_tail()}")

    async def cli(self, *args: str) -> asyncio.subprocess.Process:
        """`python -m gateway replay --config ... --destination vnaccs <args>` in a process of its own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWGW_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "replay", "--config", str(self.config), "--destination", "vnaccs", *args,
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def cli_outcome(self, who: str, *args: str, timeout_s: float = 90) -> Outcome:
        proc = await self.cli(*args)
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        assert proc.returncode is not None
        return Outcome(who, proc.returncode, out.decode() + err.decode())

    async def admin_outcome(self, who: str, body: dict[str, Any], timeout_s: float = 90) -> Outcome:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"{self.gw.url}/admin/destinations/vnaccs/replay",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as resp,
        ):
            return Outcome(who, resp.status, f"{resp.content_type} {await resp.text()}")

    async def lock(self) -> str:
        """ "held" while a replay's connection owns the lock queue, "free" once the broker dropped it."""
        conn = await aio_pika.connect(self.d.node.url, timeout=5)
        async with conn:
            channel = await conn.channel()
            try:
                await channel.declare_queue(lock_name(self.d.names, "vnaccs"), passive=True)
            except aiormq.exceptions.ChannelLockedResource:
                return "held"
            except aiormq.exceptions.ChannelNotFoundEntity:
                return "free"
            return "exists, owned by nobody"

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    def report(self, name: str) -> Counter[str]:
        counts = Counter(self.sim.ids)
        dups = sorted(i for i, n in counts.items() if n > 1)
        print(
            f"REPLAY DRILL {name}: parked {len(self.ids)} ({len(self.selected)} selected), delivered "
            f"{len(self.sim.deliveries)} ({len(counts)} unique), duplicate deliveries {len(dups)} {dups[:10]}",
            flush=True,
        )
        return counts

    async def assert_settled(self) -> None:
        """Every selected id delivered exactly once; every other id parked exactly once, in order."""
        await self.until("every selected id delivered", lambda: self.delivered(self.selected))
        await self.until("the others back in parking", lambda: self.parked_count(len(self.others)))
        assert await self.parked() == self.others  # each once, in their original order: nothing rotated
        assert Counter(self.sim.ids) == Counter(self.selected)  # each selected once, nothing else
        assert await self.lock() == "free"

    async def delivered(self, ids: list[str]) -> bool:
        return set(ids) <= set(self.sim.ids)

    async def delivered_at_least(self, n: int) -> bool:
        return len(set(self.sim.ids)) >= n


@pytest.fixture
async def rd(drill: Callable[..., Drill]) -> AsyncIterator[ReplayDrill]:
    r = ReplayDrill(drill())
    yield r
    r.kill_all()


def one_refused(outcomes: list[Outcome], *, refused_code: int, ok_code: int) -> tuple[Outcome, Outcome]:
    """Exactly one ran (ok_code) and exactly one was refused (refused_code); (winner, refused)."""
    codes = sorted(o.code for o in outcomes)
    assert sorted([refused_code, ok_code]) == codes, outcomes
    winner = next(o for o in outcomes if o.code == ok_code)
    refused = next(o for o in outcomes if o.code == refused_code)
    return winner, refused


async def race(*runs: Callable[[], Any]) -> list[Outcome]:
    """Start all at once; return their outcomes in the order they finished."""
    finished: list[Outcome] = []

    async def one(run: Callable[[], Any]) -> None:
        finished.append(await run())

    await asyncio.gather(*(one(r) for r in runs))
    return finished


async def test_cli_and_admin_replays_at_once_one_runs_the_other_is_refused_at_once(rd: ReplayDrill) -> None:
    await rd.start_with_parked(40)
    # 20 selected at 2/s: the winner holds the lock for ~10 s, far longer than the loser needs to start
    finished = await race(
        lambda: rd.cli_outcome("cli", "--from", SELECTED, "--rate", "2"),
        lambda: rd.admin_outcome("admin", {"from": SELECTED, "rate": 2}),
    )
    by_who = {o.who: o for o in finished}
    cli, api = by_who["cli"], by_who["admin"]
    print(f"cli exit {cli.code}, admin {api.code}: {[o.who for o in finished]} in finishing order")
    if cli.code == REFUSED:
        assert api.code == 200, api.text
        assert '"replayed": 20' in api.text
    else:
        assert (cli.code, api.code) == (0, 409), finished
        assert "application/problem+json" in api.text
        assert "replay_in_progress" in api.text
    refused = cli if cli.code == REFUSED else api
    assert "'vnaccs' is already running" in refused.text
    assert finished[0] is refused, "the refused replay waited for the other one instead of failing at once"
    await rd.assert_settled()
    rd.report("cli and admin at once")


async def test_two_cli_replays_at_once_one_runs_the_other_exits_3_at_once(rd: ReplayDrill) -> None:
    await rd.start_with_parked(40)
    finished = await race(
        lambda: rd.cli_outcome("cli-1", "--from", SELECTED, "--rate", "2"),
        lambda: rd.cli_outcome("cli-2", "--from", SELECTED, "--rate", "2"),
    )
    winner, refused = one_refused(finished, refused_code=REFUSED, ok_code=0)
    assert "refused" in refused.text
    assert "'vnaccs' is already running" in refused.text
    assert "replayed 20 of 40 parked" in winner.text
    assert finished[0] is refused, "the refused replay waited for the other one instead of failing at once"
    await rd.assert_settled()
    rd.report("two CLI at once")


async def test_a_replay_killed_half_way_duplicates_nothing_in_parking_and_frees_the_lock(rd: ReplayDrill) -> None:
    await rd.start_with_parked(60)
    proc = await rd.cli("--from", SELECTED, "--rate", "5")  # 30 selected: ~6 s
    await rd.until("the replay under way (5 delivered)", lambda: rd.delivered_at_least(5))
    assert await rd.lock() == "held"
    # while it runs, the gateway's admin API refuses at once too (this CLI replay is its own process)
    api = await rd.admin_outcome("admin", {"from": SELECTED}, timeout_s=30)
    assert api.code == 409, api.text
    assert "application/problem+json" in api.text
    assert "replay_in_progress" in api.text
    assert proc.returncode is None, "the replay ended before the kill: the drill proves nothing"
    proc.kill()  # SIGKILL: no finally, no close; the broker sees the socket go
    await proc.wait()
    assert proc.returncode == -9

    everything = set(rd.ids)

    async def accounted() -> bool:  # unacked messages come back as the broker notices the death
        return everything <= set(await rd.parked()) | set(rd.sim.ids) and await rd.lock() == "free"

    await rd.until("every id parked or delivered, and the lock released", accounted)
    parked = await rd.parked()
    twice = sorted(i for i, n in Counter(parked).items() if n > 1)
    assert not twice, f"parked twice after the kill: {twice}"
    # untouched: each once (a quorum queue puts what the dead replay held behind the rest)
    assert sorted(i for i in parked if i in rd.others) == sorted(rd.others)
    left = [i for i in parked if i in rd.selected]
    assert left, "the replay finished before the kill: the drill proved nothing"
    print(f"killed with {len(set(rd.sim.ids))} delivered and {len(left)} selected still parked")

    # the lock went with the dead connection: a new replay runs and finishes the job
    code = await asyncio.wait_for(rd.cli_outcome("cli-after", "--from", SELECTED), 90)
    assert code.code == 0, code.text
    await rd.until("every selected id delivered", lambda: rd.delivered(rd.selected))
    await rd.until("the others back in parking", lambda: rd.parked_count(len(rd.others)))
    assert sorted(await rd.parked()) == sorted(rd.others)
    counts = rd.report("SIGKILL half-way")
    assert set(counts) == set(rd.selected)
    # A message whose publish was confirmed but whose ack died with the process may be
    # delivered twice (the backend drops it by its id); at most the confirms in flight.
    assert sum(n - 1 for n in counts.values()) <= 256
