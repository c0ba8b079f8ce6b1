"""Issue 3's drills: a backend outage absorbed with nothing lost, and park → fix → replay."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gateway.runtime.app import BROKER, DELIVERY
from gateway.tools.simulator import Simulator
from tests.helpers import CUSDEC_BODY as BODY
from tests.helpers import (
    RunningGateway,
    admin,
    post_many,
    until,
    with_message_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.drill]


async def test_outage_of_1000_messages_is_absorbed_and_drained_without_loss(gw: RunningGateway, sim: Simulator) -> None:
    await sim.set_mode("down")  # refuses TCP connections outright
    ids = await post_many(gw, 1000, "OUT")  # every one answered 202 (asserted inside)

    delivery = gw.app[DELIVERY]
    await until(lambda: delivery.workers["vnaccs"].state == "open", what="circuit open")
    await until(
        lambda: gw.app[BROKER].depths.get("vnaccs", (0, 0))[0] == 1000, timeout_s=30, what="backlog of 1000 reported"
    )
    status, body = await admin(gw, "GET", "/admin/destinations")
    row = body["destinations"][0]
    assert (status, row["state"], row["backlog"], row["inflight"]) == (200, "open", 1000, 0)
    assert gw.metric("swgw_circuit_state", {"destination": "vnaccs"}) == 1
    assert gw.metric("swgw_destination_backlog_messages", {"destination": "vnaccs"}) == 1000
    assert gw.metric("swgw_destination_oldest_message_age_seconds", {"destination": "vnaccs"}) > 0
    attempts_during_outage = gw.metric("swgw_delivery_attempts_total", {"destination": "vnaccs"})
    assert attempts_during_outage <= 3 * 8  # no hot retry loop: a handful of attempts, then the circuit holds
    openings = gw.metric("swgw_circuit_opened_total", {"destination": "vnaccs"})
    requeued = gw.metric("swgw_deliveries_total", {"destination": "vnaccs", "outcome": "requeued"})
    assert requeued <= 8 * openings  # at most the prefetched few go back per opening: no bouncing

    await sim.set_mode("up")
    await sim.wait_for(1000, timeout_s=90)
    received = sim.received
    assert set(sim.ids) == set(ids), "every 202'd message id reached the backend"
    dupes = {k: v for k, v in Counter(d.message_id for d in sim.deliveries).items() if v > 1}
    print(
        f"\noutage drill: 1000 posted, {received.unique} unique delivered, {received.duplicates} duplicate "
        f"deliveries {sorted(dupes)[:10]}"
    )
    assert received.conflicts == 0  # duplicates (if any) carried identical bytes
    await until(lambda: delivery.workers["vnaccs"].state == "closed", what="circuit closed")
    await until(lambda: gw.app[BROKER].depths.get("vnaccs", (1, 0))[0] == 0, what="backlog drained to 0")
    assert gw.metric("swgw_circuit_opened_total", {"destination": "vnaccs"}) >= 1


def swgw(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_rejected_type_is_parked_and_swgw_replay_delivers_after_the_fix(
    gw: RunningGateway, sim: Simulator
) -> None:
    await sim.set_mode("reject", reject_types=["CUSDEC"])
    ids = await post_many(gw, 20, "REJ")
    worker = gw.app[DELIVERY].workers["vnaccs"]
    await until(lambda: worker.parked_total == 20, what="20 parked")
    assert gw.metric("swgw_deliveries_total", {"destination": "vnaccs", "outcome": "parked"}) == 20
    config = gw.settings.path

    listed = await asyncio.to_thread(swgw, config, "parked", "list", "--destination", "vnaccs")
    assert listed.returncode == 0, listed.stderr
    assert all(i in listed.stdout for i in ids)
    assert "rejected" in listed.stdout

    dry = await asyncio.to_thread(swgw, config, "replay", "--destination", "vnaccs", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would replay" in dry.stdout
    assert sim.ids == []  # the dry run moved nothing

    await sim.set_mode("up")  # the backend is fixed
    done = await asyncio.to_thread(swgw, config, "replay", "--destination", "vnaccs", "--rate", "500")
    assert done.returncode == 0, done.stderr
    assert "replayed 20" in done.stdout
    await sim.wait_for(20, timeout_s=30)
    assert sorted(sim.ids) == sorted(ids)
    left = await asyncio.to_thread(swgw, config, "parked", "list", "--destination", "vnaccs", "--json")
    assert left.stdout.strip() == ""
    with_body = next(d for d in sim.deliveries if d.message_id == ids[0])
    sent = with_message_id(BODY, ids[0])
    assert (with_body.size, with_body.sha256) == (len(sent), hashlib.sha256(sent).hexdigest())  # byte-identical
