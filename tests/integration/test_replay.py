"""Replay and parked listing against the real RabbitMQ: one replay per destination, no rotation,
acks only after confirms, a time limit, and the reason of broker dead-lettered messages.

Messages are put into the parking queue directly (with parking headers), so each test
decides exactly what is parked; the gateway (`gw`) delivers what a replay queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from gateway.broker.topology import Names, queue_arguments
from gateway.errors import BrokerUnavailable, ReplayInProgress
from gateway.messages import Parking, QueuedMessage
from gateway.operations import parkread, replay
from gateway.progress import Progress
from gateway.runtime.app import METRICS
from gateway.settings.model import Settings
from gateway.tools.simulator import Simulator
from tests.fakes import FakeTTY
from tests.helpers import ADMIN_TOKEN, ROOT, RunningGateway, admin, config_doc, get_all, write_settings

pytestmark = pytest.mark.integration

PARKING = Parking("rejected", 400, "no", 1, "2026-11-23T00:00:00.000Z")


def parked(message_id: str, message_type: str = "CUSDEC", sender: str = "VN-NSW") -> QueuedMessage:
    return QueuedMessage(
        message_id=message_id,
        correlation_id=None,
        message_type=message_type,
        sender=sender,
        receiver="VN-VNACCS",
        destination="vnaccs",
        received_at="2026-11-23T00:00:00.000Z",
        body=f"<x id='{message_id}'/>".encode(),
        parking=PARKING,
    )


async def park(settings: Settings, messages: Iterable[QueuedMessage], destination: str = "vnaccs") -> None:
    """Publish straight into the parking queue, confirmed, in this order."""
    conn = await aio_pika.connect(settings.broker.url.reveal())
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        queue = Names(settings.broker.prefix).parking(destination)
        for m in messages:
            await channel.default_exchange.publish(m.to_amqp(), routing_key=queue)


async def parked_ids(settings: Settings, destination: str = "vnaccs") -> list[str]:
    rows = await get_all(Names(settings.broker.prefix).parking(destination), ack=False)
    return [m.message_id or "" for m in rows]


async def wait_parked(settings: Settings, n: int, timeout_s: float = 20) -> list[str]:
    """Messages a closed channel held come back asynchronously: wait until `n` are parked."""
    async with asyncio.timeout(timeout_s):
        while len(ids := await parked_ids(settings)) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return ids


async def queue_state(settings: Settings, queue: str) -> tuple[str, int]:
    """("held", consumers) if another connection owns `queue` exclusively, ("free", 0) if it
    does not exist, ("exists", consumers) otherwise."""
    conn = await aio_pika.connect(settings.broker.url.reveal())
    async with conn:
        channel = await conn.channel()
        try:
            q = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelLockedResource:
            return "held", 0
        except aiormq.exceptions.ChannelNotFoundEntity:
            return "free", 0
        return "exists", q.declaration_result.consumer_count or 0


async def wait_ready(settings: Settings, n: int, timeout_s: float = 20) -> None:
    """Wait until `n` messages are ready in parking, reading none (a passive declare counts them)."""
    queue = Names(settings.broker.prefix).parking("vnaccs")
    counted: list[int] = []

    async def count(channel: aio_pika.abc.AbstractChannel) -> int:
        counted.append((await channel.declare_queue(queue, passive=True)).declaration_result.message_count or 0)
        return counted[-1]

    async with await aio_pika.connect(settings.broker.url.reveal()) as conn:
        channel = await conn.channel()
        try:
            async with asyncio.timeout(timeout_s):
                while await count(channel) != n:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"{counted[-1:]} parked, not {n}: dropped by a delivery limit?") from None


def lock_of(settings: Settings) -> str:
    return replay.lock_name(Names(settings.broker.prefix), "vnaccs")


@contextlib.asynccontextmanager
async def held_replay(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> AsyncIterator[tuple[asyncio.Task[replay.ReplayReport], asyncio.Event]]:
    """A replay that stops before reading its second message until the test sets the yielded event."""
    real_next = parkread.ParkReader.next
    calls = 0
    inside, release = asyncio.Event(), asyncio.Event()

    async def gated(reader: parkread.ParkReader) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            inside.set()
            await release.wait()
        return await real_next(reader)

    monkeypatch.setattr(parkread.ParkReader, "next", gated)
    task = asyncio.create_task(replay.replay(settings, "vnaccs", **kw))
    try:
        async with asyncio.timeout(20):
            await inside.wait()
        yield task, release
    finally:
        release.set()
        if not task.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 30)


async def swgw(settings: Settings, *args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """`python -m gateway <args> --config <file>` as a user runs it; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWGW_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, "--config", str(settings.path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"swgw {' '.join(args)} did not exit within {timeout_s:g}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_replay_acks_only_selections_and_leaves_the_rest_in_place_never_rewritten(
    gw: RunningGateway, sim: Simulator
) -> None:
    ids = [f"A-{i}" for i in range(10)]
    await park(gw.settings, [parked(m, "CUSDEC" if i % 2 else "ECOO") for i, m in enumerate(ids)])
    flt = replay.ReplayFilter(message_type="CUSDEC")
    report = await replay.replay(gw.settings, "vnaccs", flt, metrics=gw.app[METRICS])
    assert (report.present, report.scanned, report.replayed, report.skipped, report.failed) == (10, 10, 5, 5, 0)
    assert (report.timed_out, report.unread) == (False, 0)
    await sim.wait_for(5, timeout_s=15)
    assert sorted(sim.ids) == [m for i, m in enumerate(ids) if i % 2]
    left = await get_all(Names(gw.settings.broker.prefix).parking("vnaccs"), ack=False)
    # The same messages, in their original order, each once; `redelivered` shows they are the
    # originals handed back by the broker, not copies republished to the back of parking.
    assert [m.message_id for m in left] == [m for i, m in enumerate(ids) if not i % 2]
    assert all(m.redelivered for m in left)
    assert gw.metric("swgw_replayed_messages_total", {"destination": "vnaccs", "outcome": "replayed"}) == 5
    assert await queue_state(gw.settings, lock_of(gw.settings)) == ("free", 0)  # the lock went with the replay


async def test_replay_draws_its_progress_on_a_terminal_and_nothing_in_a_pipe(gw: RunningGateway) -> None:
    await park(gw.settings, [parked(f"P-{i}", "CUSDEC") for i in range(10)])
    tty = FakeTTY()
    with Progress("replay vnaccs: parked messages read", stream=tty, min_interval_s=0) as shown:
        report = await replay.replay(gw.settings, "vnaccs", dry_run=True, progress=shown.update)
    assert report.present == 10
    frames = tty.getvalue().split("\r\033[K")[1:]
    assert [f.split("  ")[0] for f in frames] == [f"replay vnaccs: parked messages read: {n}/10" for n in range(1, 11)]
    assert frames[-1].endswith(" 0s left\n")
    code, out, err = await swgw(gw.settings, "replay", "--destination", "vnaccs", "--dry-run")
    assert code == 0, err
    assert "would replay 10 of 10 parked" in out
    assert "\r" not in err + out  # stderr is a pipe here: no progress drawn


async def test_a_second_replay_is_refused_at_once_while_one_runs_anywhere(
    gw: RunningGateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await park(gw.settings, [parked(f"B-{i}") for i in range(5)])
    # rounds of 2: the replay holds B-0 (moved, its ack waiting for the round's end) and B-1
    monkeypatch.setattr(replay, "ParkReader", functools.partial(parkread.ParkReader, round_size=2))
    async with held_replay(gw.settings, monkeypatch) as (first, release):
        # the lock is an exclusive queue another connection cannot even look at
        assert await queue_state(gw.settings, lock_of(gw.settings)) == ("held", 0)
        # ... and the parking queue has one consumer: the replay's reader, in its first round
        assert await queue_state(gw.settings, Names(gw.settings.broker.prefix).parking("vnaccs")) == ("exists", 1)
        await wait_ready(gw.settings, 3)

        async with asyncio.timeout(10):  # refused at once, never queued behind the first
            with pytest.raises(ReplayInProgress, match="'vnaccs' is already running") as refused:
                await replay.replay(gw.settings, "vnaccs")
            assert refused.value.status == 409
            with pytest.raises(ReplayInProgress):
                await replay.replay(gw.settings, "vnaccs", dry_run=True)
            async with gw.session.post(
                f"{gw.url}/admin/destinations/vnaccs/replay",
                json={"type": "CUSDEC"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as resp:
                problem = await resp.json(content_type=None)
                assert (resp.status, resp.content_type) == (409, "application/problem+json")
            assert problem["reason"] == "replay_in_progress"
            assert "'vnaccs'" in problem["detail"]
            code, _, err = await swgw(gw.settings, "replay", "--destination", "vnaccs")
            assert code == 3, err
            assert "refused" in err
            assert "'vnaccs' is already running" in err
            # listing takes no lock: it shows what the replay does not hold right now
            assert [r.message_id for r in await replay.browse(gw.settings, "vnaccs")] == ["B-2", "B-3", "B-4"]
        assert not first.done()
        release.set()
        report = await asyncio.wait_for(first, 30)
    assert (report.present, report.replayed) == (5, 5)
    await sim.wait_for(5, timeout_s=15)
    assert Counter(sim.ids) == Counter({f"B-{i}": 1 for i in range(5)})
    again = await replay.replay(gw.settings, "vnaccs")  # the lock was released: the next one runs
    assert (again.present, again.replayed) == (0, 0)


async def test_the_lock_is_released_when_a_replay_fails_or_is_cancelled(
    gw: RunningGateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await park(gw.settings, [parked(f"C-{i}") for i in range(4)])
    async with held_replay(gw.settings, monkeypatch) as (first, _):
        first.cancel()  # an admin request abandoned, a gateway stopping
        with pytest.raises(asyncio.CancelledError):
            await first
    monkeypatch.undo()
    # Cancelled between reads: the publish in flight finished (C-0, confirmed, acked); the
    # rest went back to parking, each once, and the lock went with the connection.
    await sim.wait_for(1, timeout_s=15)
    assert sim.ids == ["C-0"]
    assert sorted(await wait_parked(gw.settings, 3)) == ["C-1", "C-2", "C-3"]
    assert await queue_state(gw.settings, lock_of(gw.settings)) == ("free", 0)
    report = await asyncio.wait_for(replay.replay(gw.settings, "vnaccs"), 30)
    assert (report.present, report.replayed) == (3, 3)
    await sim.wait_for(4, timeout_s=15)
    assert await parked_ids(gw.settings) == []
    assert len(sim.deliveries) == 4


async def test_a_replay_whose_publish_fails_counts_only_confirmed_and_loses_nothing(
    gw: RunningGateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay CUSDEC only; the broker nacks the publish of one selected message."""
    await park(gw.settings, [parked(f"F-{i}", "CUSDEC" if i % 2 else "ECOO") for i in range(10)])
    real_publish = aiormq.Channel.basic_publish  # replay publishes straight on the channel (republish.py)

    async def nack_f3(self: aiormq.Channel, body: bytes, **kw: Any) -> Any:
        if kw["properties"].message_id == "F-3":
            raise aiormq.exceptions.DeliveryError(None, None)  # type: ignore[arg-type]
        return await real_publish(self, body, **kw)

    monkeypatch.setattr(aiormq.Channel, "basic_publish", nack_f3)
    with pytest.raises(BrokerUnavailable, match="run the replay again") as failed:
        await replay.replay(gw.settings, "vnaccs", replay.ReplayFilter(message_type="CUSDEC"), metrics=gw.app[METRICS])
    monkeypatch.undo()
    assert "refused a publish (nack)" in str(failed.value)
    replayed = gw.metric("swgw_replayed_messages_total", {"destination": "vnaccs", "outcome": "replayed"})
    assert gw.metric("swgw_replayed_messages_total", {"destination": "vnaccs", "outcome": "failed"}) >= 1
    await sim.wait_for(int(replayed), timeout_s=15)
    left = await wait_parked(gw.settings, 10 - int(replayed))
    assert len(set(sim.ids)) == replayed  # counted when confirmed, and only then
    assert "F-3" in left
    assert Counter(left)["F-3"] == 1
    assert sorted(left + sim.ids) == sorted(f"F-{i}" for i in range(10))  # nothing lost, nothing twice
    assert await queue_state(gw.settings, lock_of(gw.settings)) == ("free", 0)  # a failed replay let go too


async def test_a_replay_stops_at_its_time_limit_and_says_so(gw: RunningGateway, sim: Simulator) -> None:
    await park(gw.settings, [parked(f"T-{i:02d}") for i in range(20)])
    ticks = iter(range(1000))  # a clock that moves one second per reading
    report = await replay.replay(gw.settings, "vnaccs", timeout_s=5.5, clock=lambda: float(next(ticks)))
    assert report.timed_out
    assert 0 < report.replayed < 20
    assert report.unread == 20 - report.scanned
    await sim.wait_for(report.replayed, timeout_s=15)
    left = await wait_parked(gw.settings, 20 - report.replayed)
    assert sorted(left + sim.ids) == [f"T-{i:02d}" for i in range(20)]  # confirmed replayed, the rest parked

    # The CLI says so, with its own exit code: 15 messages at 5/s cannot fit in 1 s.
    code, out, err = await swgw(gw.settings, "replay", "--destination", "vnaccs", "--rate", "5", "--timeout-s", "1")
    assert code == 4, out + err
    assert "stopped at the time limit (1s)" in err
    assert "run the replay again to continue" in err.lower()
    status, body = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={"timeout_s": 5000})
    assert (status, body["reason"]) == (422, "bad_filter")
    assert "1500" in body["detail"]


async def test_browse_and_replay_handle_more_parked_messages_than_any_prefetch(
    gw: RunningGateway, sim: Simulator
) -> None:
    """Browsing holds messages unacked; it must not stall at a prefetch window (was 500)."""
    n = 1200
    await park(gw.settings, [parked(f"BIG-{i:05d}") for i in range(n)])
    rows = await asyncio.wait_for(replay.browse(gw.settings, "vnaccs"), timeout=60)
    assert [r.message_id for r in rows] == [f"BIG-{i:05d}" for i in range(n)]  # all, in order
    dry = await asyncio.wait_for(replay.replay(gw.settings, "vnaccs", dry_run=True), timeout=60)
    assert (len(dry.selected), dry.replayed) == (n, 0)
    report = await asyncio.wait_for(
        replay.replay(gw.settings, "vnaccs", replay.ReplayFilter(message_type="CUSDEC", limit=700)), timeout=60
    )
    assert (report.replayed, report.unread) == (700, n - 700)
    left = await wait_parked(gw.settings, n - 700)
    assert left == [f"BIG-{i:05d}" for i in range(700, n)]  # the rest, in order, each once
    await sim.wait_for(700, timeout_s=30)


async def test_listing_reports_delivery_limit_for_messages_rabbitmq_dead_lettered(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    """A quorum queue's delivery limit dead-letters into parking with x-death and no parking headers."""
    settings = write_settings(
        tmp_path, config_doc(prefix, destinations=[{"id": "vnaccs", "url": "http://127.0.0.1:9/", "delivery_limit": 1}])
    )
    cleanup.append(settings)
    names, dest = Names(prefix), settings.destinations[0]
    conn = await aio_pika.connect(rabbit_url)
    async with conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(names.queue("vnaccs"), durable=True, arguments=queue_arguments(names, dest))
        await channel.declare_queue(names.parking("vnaccs"), durable=True, arguments={"x-queue-type": "classic"})
        await park(settings, [parked("OK-1")])  # parked by the gateway: its own reason
        await channel.default_exchange.publish(parked("DL-1").unparked().to_amqp(), routing_key=names.queue("vnaccs"))

        async def give_back(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            await msg.nack(requeue=True)  # returned until the broker dead-letters it

        tag = await queue.consume(give_back)  # a consumer: SAC queues refuse basic.get
        async with asyncio.timeout(20):
            while True:  # polled: the broker's dead-lettering has no event to wait on
                if len(await parked_ids(settings)) >= 2:
                    break
                await asyncio.sleep(0.05)
        await queue.cancel(tag)
    rows = {r.message_id: r for r in await replay.browse(settings, "vnaccs")}
    assert rows["DL-1"].reason == "delivery_limit"
    assert rows["DL-1"].parked_at  # from x-death's time
    assert rows["OK-1"].reason == "rejected"
    code, out, _ = await swgw(settings, "parked", "list", "--destination", "vnaccs")
    assert code == 0
    assert "delivery_limit" in next(line for line in out.splitlines() if line.startswith("DL-1"))


async def test_a_replay_to_a_missing_destination_queue_fails_clearly_and_moves_nothing(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    """mandatory publishes: with the destination queue gone, the broker returns them unroutable."""
    settings = write_settings(tmp_path, config_doc(prefix))
    cleanup.append(settings)
    names = Names(prefix)
    conn = await aio_pika.connect(rabbit_url)
    async with conn:
        channel = await conn.channel()
        await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        await channel.declare_queue(names.parking("vnaccs"), durable=True, arguments={"x-queue-type": "classic"})
    await park(settings, [parked("U-1"), parked("U-2")])
    with pytest.raises(BrokerUnavailable, match="no queue for destination 'vnaccs'") as failed:
        await replay.replay(settings, "vnaccs")
    assert "stopped after 0 confirmed" in str(failed.value)
    assert await wait_parked(settings, 2) == ["U-1", "U-2"]
    assert await queue_state(settings, lock_of(settings)) == ("free", 0)


async def test_parked_messages_survive_many_listings_and_keep_their_order_through_replays(
    gw: RunningGateway, sim: Simulator
) -> None:
    """Parking is a quorum queue: every listing gives each message back, and a quorum queue counts
    that against `x-delivery-limit` (4.0 defaults it to 20, then drops) and appends what it gives
    back behind earlier returns. 25 listings, full and stopped early by a limit, a replay stopped
    early by its limit, then a replay of the rest: nothing lost, every listing in parking order."""
    settings = gw.settings
    names = Names(settings.broker.prefix)
    async with await aio_pika.connect(settings.broker.url.reveal()) as conn:  # a quorum queue, not a classic one
        channel = await conn.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="x-queue-type"):
            await channel.declare_queue(names.parking("vnaccs"), durable=True, arguments={"x-queue-type": "classic"})
    ids = [f"L-{i:03d}" for i in range(100)]  # more than 32: RabbitMQ 3.10 shuffles a larger return
    await park(settings, [parked(m, "ECOO" if i % 3 == 0 else "CUSDEC") for i, m in enumerate(ids)])
    filters = [replay.ReplayFilter(), replay.ReplayFilter(limit=3), replay.ReplayFilter(message_type="ECOO", limit=20)]
    for n in range(25):
        flt = filters[n % 3]
        rows = await replay.browse(settings, "vnaccs", flt)
        want = [m for i, m in enumerate(ids) if flt.message_type is None or i % 3 == 0][: flt.limit]
        assert [r.message_id for r in rows] == want, f"listing {n + 1} ({flt.describe()})"
        await wait_ready(settings, len(ids))  # what it held is back before the next one reads

    # A replay stopped by its limit takes the first two ECOO messages; the rest stays in order.
    first = await replay.replay(settings, "vnaccs", replay.ReplayFilter(message_type="ECOO", limit=2))
    assert [r.message_id for r in first.selected] == ["L-000", "L-003"]
    assert first.replayed == 2
    rest = [m for m in ids if m not in ("L-000", "L-003")]
    await wait_ready(settings, len(rest))
    assert [r.message_id for r in await replay.browse(settings, "vnaccs")] == rest

    report = await replay.replay(settings, "vnaccs")
    assert [r.message_id for r in report.selected] == rest  # replayed in parking order
    assert (report.present, report.replayed, report.failed) == (len(rest), len(rest), 0)
    await sim.wait_for(len(ids), timeout_s=30)
    assert sorted(sim.ids) == ids  # none lost: every one of the 100 delivered
    assert await parked_ids(settings) == []
