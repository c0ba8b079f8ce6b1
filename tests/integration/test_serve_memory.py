"""A real `swgw serve` process gives a burst's memory back once the burst is over (issue 17, runtime/memory.py).

Without the trimmer, the heap that 1,000 concurrent 8 KB requests grew (512 in flight, the rest
shed with 503) stays resident for good: it is free inside glibc's main arena, and glibc only
returns the top of its heap. No timing is asserted: the RSS is polled until it comes down,
within a generous deadline.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from gateway.runtime.memory import Glibc
from gateway.settings.load import load_settings
from tests.drills.harness import GatewayProcess, drill_config
from tests.helpers import (
    CUSDEC_BODY,
    RABBIT_URL,
    TOKEN,
    RunningGateway,
    delete_topology,
    free_port,
    with_message_id,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux") or Glibc.load() is None, reason="glibc only"),
]
MB = 1024 * 1024
HEADERS = {"Content-Type": "application/xml", "Authorization": f"Bearer {TOKEN}"}


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def burst(url: str, n: int, tag: str) -> Counter[int]:
    """`n` requests at once, each on a connection of its own."""
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def post(i: int) -> int:
            body = with_message_id(CUSDEC_BODY, f"{tag}-{i}")
            async with http.post(f"{url}/v1/messages", data=body, headers=HEADERS) as resp:
                await resp.read()
                return resp.status

        return Counter(await asyncio.gather(*(post(i) for i in range(n))))


async def test_a_burst_of_concurrent_requests_leaves_no_lasting_rss_growth(
    tmp_path: Path, rabbit_url: str, prefix: str
) -> None:
    port = free_port()
    config = drill_config(tmp_path, prefix, RABBIT_URL, port=port)
    gw = GatewayProcess(config, port, tmp_path / "gw.log", role="ingress")
    gw.start()
    try:
        await gw.wait_ready()
        assert gw.proc is not None
        await burst(gw.url, 64, "warm")  # lazy imports, schema caches, the broker channel: not the burst's
        before, peak_before = memory_mb(gw.proc.pid)
        statuses = await burst(gw.url, 1000, "burst")
        assert set(statuses) <= {202, 503}, statuses
        assert statuses[202] >= 100, statuses
        _, peak = memory_mb(gw.proc.pid)
        grown = peak - before
        # The precondition that makes the test mean something: the burst grew the process a lot
        # (some 60 MB here: ~90 KB per request in flight, most of it freed when it is answered).
        assert peak > peak_before
        assert grown >= 30, (
            f"the burst grew the RSS by {grown:.0f} MB only: {before:.0f} -> {peak:.0f}\n{gw.log_tail()}"
        )
        bound, rss = before + grown / 2, peak  # at least half of the growth given back
        try:
            async with asyncio.timeout(60):  # the trimmer looks every second; a loaded machine gets a minute
                while (rss := memory_mb(gw.proc.pid)[0]) > bound:  # noqa: ASYNC110 - RSS has no event
                    await asyncio.sleep(0.5)
        except TimeoutError:
            pytest.fail(
                f"RSS stayed above {bound:.0f} MB after the burst: {before:.0f} -> peak {peak:.0f} -> {rss:.0f}"
            )
    finally:
        gw.kill()
        await delete_topology(load_settings(config, env={}))


async def test_the_app_runs_the_memory_trimmer_as_a_supervised_task(gw: RunningGateway) -> None:
    running = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    assert "memory-trimmer" in running
    # spawned supervised: its restart series exists from the start, at zero
    assert gw.registry.get_sample_value("swgw_background_task_restarts_total", {"task": "memory-trimmer"}) == 0
