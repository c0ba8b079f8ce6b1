"""The replay's consumer reader (gateway/operations/parkread.py) against the real RabbitMQ: read
order kept through the give-back in one round and in several, messages parked during the
replay never read; a concurrent listing does not hang it; a lost connection loses nothing.

Messages are put into the parking queue directly; the gateway (`gw`) delivers what a replay queues.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from typing import Any

import aio_pika
import pytest

from gateway.broker.topology import Names
from gateway.errors import BrokerUnavailable
from gateway.operations import parkread, replay
from gateway.tools.simulator import Simulator
from tests.helpers import RunningGateway, TcpProxy, config_doc, fast_destination, get_all, write_settings
from tests.integration.test_replay import lock_of, park, parked, parked_ids, queue_state, wait_parked, wait_ready

pytestmark = pytest.mark.integration


def gate_next(monkeypatch: pytest.MonkeyPatch, at: int, action: Any) -> list[parkread.ParkReader]:
    """Run `action()` before the reader's `at`-th read; returns the readers seen (one per replay)."""
    real_next = parkread.ParkReader.next
    readers: list[parkread.ParkReader] = []

    async def gated(reader: parkread.ParkReader) -> Any:
        if reader not in readers:
            readers.append(reader)
        calls = getattr(reader, "_test_calls", 0) + 1
        reader._test_calls = calls  # type: ignore[attr-defined]
        if calls == at:
            await action()
        return await real_next(reader)

    monkeypatch.setattr(parkread.ParkReader, "next", gated)
    return readers


@pytest.mark.parametrize("round_size", [None, 40], ids=["one-round", "rounds-of-40"])
async def test_a_limited_replay_gives_back_in_order_and_never_touches_what_was_parked_during_it(
    gw: RunningGateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch, round_size: int | None
) -> None:
    """120 parked, 1 in 3 CUSDEC; replay CUSDEC with limit 25, in one round or in rounds of 40.
    50 more CUSDEC are parked during the replay. The 95 not selected go back (far more than 32,
    and more than 32 in a round) in parking order; the 50 are never read and stay behind them."""
    ids = [f"O-{i:03d}" for i in range(120)]
    await park(gw.settings, [parked(m, "ECOO" if i % 3 else "CUSDEC") for i, m in enumerate(ids)])
    late = [f"LATE-{i:02d}" for i in range(50)]
    if round_size is not None:
        monkeypatch.setattr(replay, "ParkReader", functools.partial(parkread.ParkReader, round_size=round_size))

    async def park_late() -> None:
        await park(gw.settings, [parked(m, "CUSDEC") for m in late])

    gate_next(monkeypatch, 2, park_late)
    flt = replay.ReplayFilter(message_type="CUSDEC", limit=25)
    report = await asyncio.wait_for(replay.replay(gw.settings, "vnaccs", flt), 60)
    selected = [m for i, m in enumerate(ids) if i % 3 == 0][:25]
    assert [r.message_id for r in report.selected] == selected
    # scanned: up to the 25th CUSDEC (O-072); the other 47 were read through, never selected
    assert (report.present, report.scanned, report.replayed, report.failed, report.unread) == (120, 73, 25, 0, 47)
    rest = [m for m in ids if m not in selected]
    await wait_ready(gw.settings, len(rest) + len(late))
    back = await get_all(Names(gw.settings.broker.prefix).parking("vnaccs"), ack=False)
    assert [m.message_id for m in back] == rest + late  # read order, the late ones behind, each once
    # Delivered once and returned once each: the consumer was cancelled before the give-back, so
    # nothing returned reached it again; the late ones were never delivered at all.
    assert Counter(m.headers.get("x-delivery-count") for m in back) == {1: len(rest), None: len(late)}
    await sim.wait_for(25, timeout_s=30)
    assert sorted(sim.ids) == sorted(selected)  # nothing parked during the replay was replayed


async def test_a_replay_ends_when_a_listing_holds_messages_it_counted(
    gw: RunningGateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing takes 3 of the 10 between the replay's count and its consumer: the consumer
    receives 7 and then nothing. The replay must end (the idle bound), not wait for the 3."""
    ids = [f"H-{i}" for i in range(10)]
    await park(gw.settings, [parked(m) for m in ids])
    async with await aio_pika.connect(gw.settings.broker.url.reveal()) as holder:
        channel = await holder.channel()
        queue = await channel.declare_queue(Names(gw.settings.broker.prefix).parking("vnaccs"), passive=True)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        real_start = parkread.ParkReader._start_round

        async def listing_first(reader: parkread.ParkReader) -> None:
            for _ in range(3 - len(held)):
                got = await queue.get(no_ack=False, fail=False)
                assert got is not None
                held.append(got)
            await real_start(reader)

        monkeypatch.setattr(parkread.ParkReader, "_start_round", listing_first)
        report = await asyncio.wait_for(replay.replay(gw.settings, "vnaccs"), 30)
        assert (report.present, report.scanned, report.replayed, report.unread) == (10, 7, 7, 3)
        assert [m.message_id for m in held] == ids[:3]
        await sim.wait_for(7, timeout_s=15)
        assert sorted(sim.ids) == ids[3:]
    # the listing's connection closed: its 3 are parked again, and nothing else
    assert sorted(await wait_parked(gw.settings, 3)) == ids[:3]
    assert await queue_state(gw.settings, lock_of(gw.settings)) == ("free", 0)


async def test_a_replay_whose_connection_is_lost_mid_way_loses_nothing(
    gw: RunningGateway, sim: Simulator, tmp_path: Any
) -> None:
    """The replay's connection goes through a proxy cut after 150 of 400 reads: it fails with
    BrokerUnavailable; every message is then parked or delivered, none parked twice, and a
    second replay finishes the job."""
    ids = [f"K-{i:03d}" for i in range(400)]
    selected = [m for i, m in enumerate(ids) if i % 2 == 0]
    await park(gw.settings, [parked(m, "CUSDEC" if i % 2 == 0 else "ECOO") for i, m in enumerate(ids)])
    proxy = TcpProxy(5672)
    await proxy.start()
    doc = config_doc(
        gw.settings.broker.prefix,
        broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        destinations=[fast_destination("vnaccs", sim)],
    )
    (tmp_path / "via-proxy").mkdir()
    cut_settings = write_settings(tmp_path / "via-proxy", doc)
    cuts: list[asyncio.Task[None]] = []

    def cut_at(read: int, present: int) -> None:
        if read == 150:
            cuts.append(asyncio.create_task(proxy.cut()))

    flt = replay.ReplayFilter(message_type="CUSDEC")
    try:
        with pytest.raises(BrokerUnavailable, match="run the replay again"):
            await asyncio.wait_for(replay.replay(cut_settings, "vnaccs", flt, progress=cut_at), 60)
    finally:
        await proxy.cut()
    assert cuts, "the replay ended before the cut: the test proves nothing"

    async def accounted() -> list[str]:  # the broker returns the unacked once it sees the socket go
        async with asyncio.timeout(30):
            while not set(ids) <= set(left := await parked_ids(gw.settings)) | set(sim.ids):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        return left

    left = await accounted()
    assert not [m for m, n in Counter(left).items() if n > 1], "parked twice"
    assert sorted(m for m in left if m not in selected) == sorted(set(ids) - set(selected))  # untouched, each once
    assert [m for m in left if m in selected], "the replay finished before the cut: the test proves nothing"
    assert await queue_state(gw.settings, lock_of(gw.settings)) == ("free", 0)

    again = await asyncio.wait_for(replay.replay(gw.settings, "vnaccs", flt), 60)
    assert again.failed == 0
    async with asyncio.timeout(30):
        while not set(selected) <= set(sim.ids):  # noqa: ASYNC110 (the simulator's count, no event)
            await asyncio.sleep(0.1)
    assert set(sim.ids) == set(selected)
    assert sorted(await wait_parked(gw.settings, len(ids) - len(selected))) == sorted(set(ids) - set(selected))


async def test_every_ack_of_a_replay_is_applied_before_its_channel_closes(gw: RunningGateway, sim: Simulator) -> None:
    """1,000 selected in one round: their acks go out together when the round ends. RabbitMQ 3.10
    sends 32 of them ahead and keeps the rest in the channel until those are applied; a channel
    closed first loses them, and the messages come back to parking although replayed."""
    ids = [f"A-{i:04d}" for i in range(1000)]
    await park(gw.settings, [parked(m) for m in ids])
    # at a rate, every publish is confirmed before the round ends: all 1,000 acks go out at its end
    report = await asyncio.wait_for(replay.replay(gw.settings, "vnaccs", rate_per_s=3000), 60)
    assert (report.present, report.replayed, report.failed) == (1000, 1000, 0)
    await sim.wait_for(1000, timeout_s=60)
    assert await parked_ids(gw.settings) == []
