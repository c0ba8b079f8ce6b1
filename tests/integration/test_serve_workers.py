"""`swgw serve --workers 2` as a real process tree: shared port, delivery and admin in the first, clean stop."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.settings.load import load_settings
from gateway.tools.simulator import Simulator
from tests.drills.harness import GatewayProcess, drill_config
from tests.helpers import ADMIN_TOKEN, CUSDEC_BODY, RABBIT_URL, TOKEN, delete_topology, free_port, with_message_id

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as s:
        yield s


async def test_two_workers_share_the_port_deliver_everything_and_stop_together(
    tmp_path: Path, rabbit_url: str, prefix: str, sim: Simulator
) -> None:
    port, admin_port = free_port(), free_port()
    config = drill_config(
        tmp_path,
        prefix,
        RABBIT_URL,
        port=port,
        destination_url=sim.url,
        destination={"health_url": f"http://127.0.0.1:{sim.port}/health", "probe_interval_s": 0.2},
    )
    text = config.read_text().replace("[admin]\n", f"[admin]\nport = {admin_port}\n")
    config.write_text(text)
    gw = GatewayProcess(config, port, tmp_path / "gw.log", workers=2)
    gw.start()
    try:
        await gw.wait_ready()
        assert gw.proc is not None
        assert len(children(gw.proc.pid)) == 1, gw.log_tail()  # the second worker
        async with aiohttp.ClientSession() as http:
            sem = asyncio.Semaphore(16)

            async def post(i: int) -> int:
                async with (
                    sem,
                    http.post(
                        f"{gw.url}/v1/messages",
                        data=with_message_id(CUSDEC_BODY, f"W-{i}"),
                        headers={"Content-Type": "application/xml", "Authorization": f"Bearer {TOKEN}"},
                    ) as resp,
                ):
                    return resp.status

            statuses = await asyncio.gather(*(post(i) for i in range(200)))
            assert statuses == [202] * 200
            await sim.wait_for(200, timeout_s=60)  # delivery runs in the first process
            assert sorted(sim.ids) == sorted(f"W-{i}" for i in range(200))
            async with http.get(
                f"http://127.0.0.1:{admin_port}/admin/destinations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["destinations"][0]["delivered_total"] >= 1
            async with http.get(
                f"{gw.url}/admin/destinations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as resp:
                assert resp.status == 404  # the admin API is not on the partner port
        worker = children(gw.proc.pid)[0]
        assert await asyncio.to_thread(gw.terminate) == 0
        async with asyncio.timeout(15):  # the second worker notices and stops too: no orphan
            while alive(worker):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        gw.kill()
        await delete_topology(load_settings(config, env={}))
