"""An outage told by `swgw status` and /metrics, against the real broker and the simulator.

The issue's bar: during the outage the view says circuit open with the backlog held,
after it the backlog drains and deliveries count up, and parked messages are counted;
the exposition with every delivery metric populated still passes `promtool check metrics`.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime

import pytest

from gateway.runtime.app import BROKER, DELIVERY
from gateway.tools import status
from gateway.tools.simulator import Simulator
from tests.helpers import (
    ADMIN_TOKEN,
    RunningGateway,
    post_many,
    until,
)

pytestmark = pytest.mark.integration


async def _row(gw: RunningGateway) -> status.Row:
    rows = await status.fetch(gw.url, ADMIN_TOKEN)
    assert [r.id for r in rows] == ["vnaccs"]
    return rows[0]


async def test_status_and_metrics_tell_the_outage_recovery_and_parking(gw: RunningGateway, sim: Simulator) -> None:
    worker = gw.app[DELIVERY].workers["vnaccs"]
    broker = gw.app[BROKER]  # its .depths dict is replaced on every poll: read it each time

    # Outage: the backend refuses connections; 30 messages are accepted and held.
    await sim.set_mode("down")
    await post_many(gw, 30, "STATUS")
    await until(lambda: worker.state == "open", what="circuit open")
    await until(lambda: broker.depths.get("vnaccs", (0, 0))[0] == 30, what="backlog of 30 reported")
    during = await _row(gw)
    assert (during.state, during.backlog, during.parked) == ("open", 30, 0)
    screen = status.render([during], datetime.now(UTC))
    assert "vnaccs       OPEN" in screen
    assert "! vnaccs: backend down (circuit open for" in screen
    assert "30 message(s) held safely in RabbitMQ" in screen
    assert gw.metric("swgw_circuit_state", {"destination": "vnaccs"}) == 1
    assert gw.metric("swgw_destination_backlog_messages", {"destination": "vnaccs"}) == 30

    # Recovery: everything drains, the circuit closes, deliveries count up.
    await sim.set_mode("up")
    await sim.wait_for(30, timeout_s=60)
    await until(lambda: worker.state == "closed", what="circuit closed")
    await until(lambda: broker.depths.get("vnaccs", (1, 0))[0] == 0, what="backlog drained")
    after = await _row(gw)
    assert (after.state, after.backlog) == ("closed", 0)
    assert after.last_delivery_at is not None
    assert (datetime.now(UTC) - after.last_delivery_at).total_seconds() < 60
    (rated,) = status.with_rates([during], [after], elapsed_s=1.0)
    assert rated.rate_per_s is not None
    assert rated.rate_per_s >= 30  # 30 delivered between the two samples
    assert "all destinations closed (delivering), nothing parked" in status.render([after], datetime.now(UTC))
    assert gw.metric("swgw_deliveries_total", {"destination": "vnaccs", "outcome": "delivered"}) >= 30

    # A backend that rejects the type: messages are parked and counted everywhere.
    await sim.set_mode("reject", reject_types=["CUSDEC"])
    await post_many(gw, 2, "STATUS-REJ")
    await until(lambda: broker.depths.get("vnaccs", (0, 0))[1] == 2, what="2 parked reported")
    parked = await _row(gw)
    assert parked.parked == 2
    assert "! vnaccs: 2 parked; inspect: swgw parked list --destination vnaccs" in status.render(
        [parked], datetime.now(UTC)
    )
    assert gw.metric("swgw_destination_parked_messages", {"destination": "vnaccs"}) == 2
    assert gw.metric("swgw_deliveries_total", {"destination": "vnaccs", "outcome": "parked"}) == 2

    # The exposition with every delivery metric populated is still lint-clean.
    async with gw.session.get(f"{gw.url}/metrics") as resp:
        exposition = await resp.read()
    for name in ("swgw_backend_response_seconds_bucket", "swgw_end_to_end_seconds_bucket", "swgw_circuit_opened_total"):
        assert name.encode() in exposition
    promtool = shutil.which("promtool")
    if promtool is not None:  # presence in CI is enforced by test_promtool.py
        proc = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(exposition), timeout=60)
        assert proc.returncode == 0, out.decode()
        assert not out.strip(), out.decode()
