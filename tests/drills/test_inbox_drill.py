"""A pull inbox through a gateway SIGKILL between lease and acknowledgement: nothing is lost,
nothing acknowledged is offered again, nothing unacknowledged is dropped.

`swgw serve` runs as a process on the drill node with an inbox (lease_s = 2) for TH-NSW. The
sender posts 20 messages; the partner leases 10 and acknowledges 3 of them, leases 5 more,
and the gateway is SIGKILLed with 12 messages leased and unacknowledged and 5 never pulled.
After a restart on the same config, the partner runs the reference client
(gateway/tools/inbox_client.py) until the journal says every message is delivered. Then:

- the folder holds exactly the 17 messages not acknowledged before the kill, byte for byte
  (the 12 leased ones came back when their leases ended: the broker kept the deadline,
  not the killed process);
- none of the 3 acknowledged before the kill was offered again (their copies were dropped);
- every one of the 20 is `delivered` in the journal (read from the SQLite file), with one
  `delivered` event each: no acknowledgement was recorded twice;
- the inbox and its leased queue end empty.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from gateway.broker.topology import Names
from gateway.settings.load import load_settings
from gateway.tools import inbox_client
from tests.drills import queues
from tests.drills.harness import GatewayProcess, until
from tests.helpers import OTHER_TOKEN, TOKEN, free_port, to_toml
from tests.integration.test_inbox import inbox_doc, message_to
from tests.rabbit_node import RabbitNode

pytestmark = [pytest.mark.drill, pytest.mark.timeout(240)]


def journal(gw: GatewayProcess) -> tuple[dict[str, str], Counter[str]]:
    settings = load_settings(gw.config)
    db = sqlite3.connect(Path(settings.dedup.path), timeout=10)
    try:
        table = settings.dedup.table
        statuses = dict(db.execute(f'SELECT message_id, status FROM "{table}" WHERE sender = ?', ("VN-NSW",)))
        delivered = Counter(
            mid
            for (mid,) in db.execute(
                f'SELECT message_id FROM "{table}_events" WHERE sender = ? AND kind = ?', ("VN-NSW", "delivered")
            )
        )
        return statuses, delivered
    finally:
        db.close()


async def depths(url: str, prefix: str) -> tuple[int, int]:
    names = Names(prefix)
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        waiting = await ch.declare_queue(names.queue("th-inbox"), passive=True)
        leased = await ch.declare_queue(names.leased("th-inbox"), passive=True)
        return waiting.declaration_result.message_count or 0, leased.declaration_result.message_count or 0


async def test_a_sigkill_between_lease_and_ack_loses_nothing(
    rabbit_node: RabbitNode, tmp_path: Path, prefix: str
) -> None:
    port = free_port()
    doc = inbox_doc(prefix, lease_s=2)
    doc["broker"]["url"] = rabbit_node.url
    doc["server"]["port"] = port
    config = tmp_path / "gateway.toml"
    config.write_text(to_toml(doc), encoding="utf-8")
    gw = GatewayProcess(config, port, tmp_path / "gateway.log")
    gw.start()
    try:
        await gw.wait_ready()
        partner = {"Authorization": f"Bearer {OTHER_TOKEN}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            bodies: dict[str, bytes] = {}
            for i in range(20):
                mid = f"DRILL-{i:02d}"
                bodies[mid] = message_to("TH-NSW", mid)
                headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/xml"}
                async with session.post(f"{gw.url}/v1/messages", data=bodies[mid], headers=headers) as r:
                    assert r.status == 202, await r.text()

            async with session.get(f"{gw.url}/v1/inbox", params={"limit": "10"}, headers=partner) as r:
                first = [m["message_id"] for m in (await r.json())["messages"]]
            assert len(first) == 10
            acked_before = first[:3]
            async with session.post(f"{gw.url}/v1/inbox/ack", json={"message_ids": acked_before}, headers=partner) as r:
                assert (await r.json())["acknowledged"] == acked_before
            async with session.get(f"{gw.url}/v1/inbox", params={"limit": "5"}, headers=partner) as r:
                assert len((await r.json())["messages"]) == 5

        gw.kill()  # 12 leased and unacknowledged, 5 never pulled
        gw.start()
        await gw.wait_ready()

        folder = tmp_path / "partner-inbox"
        written: list[Path] = []

        async def pulled_everything() -> bool:
            result = await inbox_client.pull(gw.url, OTHER_TOKEN, folder, limit=7, wait_s=1)
            written.extend(result.written)
            statuses, _ = journal(gw)
            return all(statuses.get(mid) == "delivered" for mid in bodies)

        await until("every message acknowledged after the restart", pulled_everything, timeout_s=90)

        expected = sorted(set(bodies) - set(acked_before))
        on_disk = sorted(p.name for p in folder.iterdir())
        assert on_disk == sorted(f"VN-NSW__{mid}.xml" for mid in expected)
        for mid in expected:
            assert (folder / f"VN-NSW__{mid}.xml").read_bytes() == bodies[mid]
        assert not {p.name for p in written} & {f"VN-NSW__{mid}.xml" for mid in acked_before}

        statuses, delivered = journal(gw)
        assert {statuses[mid] for mid in bodies} == {"delivered"}
        assert delivered == Counter(dict.fromkeys(bodies, 1))  # each acknowledgement recorded once

        async def drained() -> bool:
            # An acknowledged copy comes back when its lease ends and is dropped by the next poll.
            await inbox_client.pull(gw.url, OTHER_TOKEN, folder, limit=7, wait_s=1)
            return await depths(rabbit_node.url, prefix) == (0, 0)

        await until("inbox and leased queue empty", drained, timeout_s=60)
    finally:
        gw.kill()
        await queues.drop(rabbit_node.url, prefix, ("th-inbox", "kh-inbox"))
        for name in (Names(prefix).leased("th-inbox"), Names(prefix).leased("kh-inbox")):
            with contextlib.suppress(Exception):
                await queues.delete(rabbit_node.url, name)
