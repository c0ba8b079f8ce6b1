"""Pull inboxes on the real broker: leases, long polls, acknowledgements, partners kept apart.

No sleeps and no wall-clock asserts: a long poll is shown to wake on arrival because it
returns the message well inside its own wait_s (a poll that timed out returns nothing);
a lease's end is shown by the message coming back to a long poll.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from gateway.broker.topology import Names
from gateway.runtime.app import DELIVERY
from gateway.tools import inbox_client
from tests.helpers import (
    ADMIN_TOKEN,
    CUSDEC_BODY,
    OTHER_TOKEN,
    TOKEN,
    RunningGateway,
    config_doc,
    run_gateway,
    sha,
    until,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration

KH_TOKEN = "test-token-kh-nsw"
LONG_WAIT_S = 25.0  # longer than any await on a poll below: a poll that returns a message woke on arrival


def inbox_doc(prefix: str, lease_s: float) -> dict[str, Any]:
    return config_doc(
        prefix,
        partners=[
            {"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "rate_per_s": 100000.0, "burst": 100000},
            {"id": "TH-NSW", "token_sha256": [sha(OTHER_TOKEN)], "rate_per_s": 100000.0, "burst": 100000},
            {"id": "KH-NSW", "token_sha256": [sha(KH_TOKEN)], "rate_per_s": 100000.0, "burst": 100000},
        ],
        destinations=[
            {"id": "th-inbox", "kind": "inbox", "partner": "TH-NSW", "lease_s": lease_s},
            {"id": "kh-inbox", "kind": "inbox", "partner": "KH-NSW", "lease_s": lease_s},
        ],
        routes=[
            {"to": "TH-NSW", "message_type": "CUSDEC", "destination": "th-inbox"},
            {"to": "KH-NSW", "message_type": "CUSDEC", "destination": "kh-inbox"},
        ],
    )


def message_to(receiver: str, message_id: str) -> bytes:
    return with_message_id(CUSDEC_BODY, message_id).replace(b"<To>VN-VNACCS</To>", f"<To>{receiver}</To>".encode())


async def make_gateway(
    tmp_path: Path, prefix: str, cleanup: list[object], lease_s: float
) -> AsyncIterator[RunningGateway]:
    settings = write_settings(tmp_path, inbox_doc(prefix, lease_s))
    cleanup.append(settings)
    async with run_gateway(settings) as gateway:
        yield gateway


@pytest.fixture
async def gw(tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]) -> AsyncIterator[RunningGateway]:
    async for g in make_gateway(tmp_path, prefix, cleanup, lease_s=300):
        yield g


@pytest.fixture
async def short_gw(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> AsyncIterator[RunningGateway]:
    async for g in make_gateway(tmp_path, prefix, cleanup, lease_s=1):
        yield g


async def send(gw: RunningGateway, receiver: str, message_id: str) -> bytes:
    body = message_to(receiver, message_id)
    status, answer, _ = await gw.post(body)
    assert status == 202, answer
    return body


async def pull(gw: RunningGateway, token: str, *, limit: int = 10, wait_s: float = 0) -> tuple[int, Any]:
    params = {"limit": str(limit), "wait_s": str(wait_s)}
    async with gw.session.get(f"{gw.url}/v1/inbox", params=params, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


async def ack(gw: RunningGateway, token: str, ids: list[str]) -> tuple[int, Any]:
    async with gw.session.post(
        f"{gw.url}/v1/inbox/ack", json={"message_ids": ids}, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        return r.status, await r.json(content_type=None)


async def journal_status(gw: RunningGateway, message_id: str) -> str:
    async with gw.session.get(f"{gw.url}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["status"])


async def queue_counts(gw: RunningGateway, inbox: str) -> tuple[int, int, int]:
    """(waiting, leased, consumers on the inbox queue), read from the broker."""
    names = Names(gw.settings.broker.prefix)
    conn = await aio_pika.connect(gw.settings.broker.url.reveal())
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(names.queue(inbox), passive=True)
        leased = await ch.declare_queue(names.leased(inbox), passive=True)
        return (
            q.declaration_result.message_count or 0,
            leased.declaration_result.message_count or 0,
            q.declaration_result.consumer_count or 0,
        )


async def test_pull_hands_out_messages_as_sent_and_ack_is_idempotent(gw: RunningGateway) -> None:
    bodies = {mid: await send(gw, "TH-NSW", mid) for mid in ("IN-1", "IN-2", "IN-3")}

    status, first = await pull(gw, OTHER_TOKEN, limit=2)
    assert status == 200
    status, second = await pull(gw, OTHER_TOKEN, limit=10)
    got = first["messages"] + second["messages"]
    assert [m["message_id"] for m in got] == ["IN-1", "IN-2", "IN-3"]
    for m in got:
        assert m["body"].encode() == bodies[m["message_id"]]  # the envelope as the sender posted it
        assert (m["message_type"], m["sender"]) == ("CUSDEC", "VN-NSW")
        assert m["received_at"]
    assert (await pull(gw, OTHER_TOKEN))[1] == {"messages": []}  # all leased: nothing left to hand out
    assert await journal_status(gw, "IN-1") == "delivering"  # leased, not yet acknowledged

    status, answer = await ack(gw, OTHER_TOKEN, ["IN-1", "IN-2"])
    assert (status, answer) == (200, {"acknowledged": ["IN-1", "IN-2"], "unknown": []})
    status, answer = await ack(gw, OTHER_TOKEN, ["IN-1", "IN-2", "IN-3", "NEVER-SENT"])
    assert (status, answer) == (200, {"acknowledged": ["IN-1", "IN-2", "IN-3"], "unknown": ["NEVER-SENT"]})
    assert [await journal_status(gw, mid) for mid in bodies] == ["delivered"] * 3
    assert gw.metric("swgw_inbox_acknowledged_total", {"inbox": "th-inbox"}) == 3
    assert gw.metric("swgw_inbox_leased_total", {"inbox": "th-inbox"}) == 3


async def test_a_long_poll_wakes_on_arrival(gw: RunningGateway) -> None:
    polling = asyncio.create_task(pull(gw, OTHER_TOKEN, wait_s=LONG_WAIT_S))
    # The poll is waiting once its consumer is on the inbox queue (read from the broker).
    for _ in range(400):
        if (await queue_counts(gw, "th-inbox"))[2] == 1 or polling.done():
            break
        await asyncio.sleep(0.05)
    assert not polling.done(), polling.result()
    await send(gw, "TH-NSW", "WAKE-1")
    status, answer = await asyncio.wait_for(polling, timeout=LONG_WAIT_S - 5)
    assert status == 200
    assert [m["message_id"] for m in answer["messages"]] == ["WAKE-1"]
    assert (await queue_counts(gw, "th-inbox"))[2] == 0  # the consumer went with the request


async def test_an_unacknowledged_lease_ends_and_the_message_is_offered_again(short_gw: RunningGateway) -> None:
    gw = short_gw  # lease_s = 1
    await send(gw, "TH-NSW", "LEASE-1")
    (_, first) = await pull(gw, OTHER_TOKEN)
    assert [m["message_id"] for m in first["messages"]] == ["LEASE-1"]

    # Not acknowledged: after its lease the broker puts it back, and a waiting poll gets it again.
    (_, again) = await asyncio.wait_for(pull(gw, OTHER_TOKEN, wait_s=LONG_WAIT_S), timeout=LONG_WAIT_S - 5)
    assert [m["message_id"] for m in again["messages"]] == ["LEASE-1"]
    assert again["messages"][0]["body"] == first["messages"][0]["body"]
    assert gw.metric("swgw_inbox_leases_expired_total", {"inbox": "th-inbox"}) == 1

    # Acknowledged now: when this lease ends, the copy comes back and is dropped, never offered.
    assert (await ack(gw, OTHER_TOKEN, ["LEASE-1"]))[1]["acknowledged"] == ["LEASE-1"]
    for _ in range(3):
        (_, after) = await asyncio.wait_for(pull(gw, OTHER_TOKEN, wait_s=3), timeout=LONG_WAIT_S)
        assert after == {"messages": []}
        if await queue_counts(gw, "th-inbox") == (0, 0, 0):
            break
    await until_empty(gw, "th-inbox")
    assert await journal_status(gw, "LEASE-1") == "delivered"


async def until_empty(gw: RunningGateway, inbox: str) -> None:
    for _ in range(200):
        if await queue_counts(gw, inbox) == (0, 0, 0):
            return
        await pull(gw, OTHER_TOKEN, wait_s=1)
    raise AssertionError(f"{inbox} never emptied: {await queue_counts(gw, inbox)}")


async def test_a_partner_sees_and_acknowledges_only_its_own_inbox(gw: RunningGateway) -> None:
    await send(gw, "TH-NSW", "TH-ONLY")
    await send(gw, "KH-NSW", "KH-ONLY")

    (_, kh) = await pull(gw, KH_TOKEN)
    assert [m["message_id"] for m in kh["messages"]] == ["KH-ONLY"]
    (_, th) = await pull(gw, OTHER_TOKEN)
    assert [m["message_id"] for m in th["messages"]] == ["TH-ONLY"]
    # KH acknowledging TH's message does nothing: it is not in KH's inbox.
    assert (await ack(gw, KH_TOKEN, ["TH-ONLY"]))[1] == {"acknowledged": [], "unknown": ["TH-ONLY"]}
    assert await journal_status(gw, "TH-ONLY") == "delivering"

    # The sender has no inbox: a clear 404 problem; no credentials: 401.
    status, problem = await pull(gw, TOKEN)
    assert status == 404
    assert problem["type"] == "urn:swgw:problem:no_inbox"
    assert "VN-NSW" in problem["detail"]
    assert (await ack(gw, TOKEN, ["TH-ONLY"]))[0] == 404
    async with gw.session.get(f"{gw.url}/v1/inbox") as r:
        assert r.status == 401
    status, problem = await pull(gw, OTHER_TOKEN, limit=1000)
    assert (status, problem["errors"][0]["path"]) == (400, "limit")


async def test_the_reference_client_writes_then_acknowledges(gw: RunningGateway, tmp_path: Path) -> None:
    bodies = {mid: await send(gw, "TH-NSW", mid) for mid in ("CLI-1", "CLI-2", "CLI:3")}
    folder = tmp_path / "inbox"
    result = await inbox_client.pull(gw.url, OTHER_TOKEN, folder, limit=2, wait_s=0)
    assert result.acknowledged == 3
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["VN-NSW__CLI-1.xml", "VN-NSW__CLI-2.xml", "VN-NSW__CLI_3.xml"]
    for mid, body in bodies.items():
        assert (folder / inbox_client.file_name({"sender": "VN-NSW", "message_id": mid})).read_bytes() == body
    assert [await journal_status(gw, mid) for mid in ("CLI-1", "CLI-2")] == ["delivered"] * 2


async def test_the_command_line_client_pulls_into_a_folder(gw: RunningGateway, tmp_path: Path) -> None:
    body = await send(gw, "TH-NSW", "CMD-1")
    folder = tmp_path / "cmd-inbox"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "inbox", "pull", "--url", gw.url, "--token-env", "TH_TOKEN", "--to", str(folder)),
        *("--wait-s", "0"),
        env={**os.environ, "TH_TOKEN": OTHER_TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip().endswith("1 message(s) written to " + str(folder) + ", 1 acknowledged")
    assert (folder / "VN-NSW__CMD-1.xml").read_bytes() == body
    assert await journal_status(gw, "CMD-1") == "delivered"


async def test_inbox_gauges_tell_depth_age_and_last_poll(gw: RunningGateway) -> None:
    labels = {"inbox": "th-inbox"}
    assert gw.metric("swgw_inbox_unpolled_alert_seconds", labels) == 3600
    started = gw.metric("swgw_inbox_last_poll_timestamp_seconds", labels)
    assert started > 0  # the replica's start: SwgwInboxNotPolled counts from there until a first poll
    await send(gw, "TH-NSW", "GAUGE-1")
    await send(gw, "TH-NSW", "GAUGE-2")
    (_, got) = await pull(gw, OTHER_TOKEN, limit=1)
    assert [m["message_id"] for m in got["messages"]] == ["GAUGE-1"]
    assert gw.metric("swgw_inbox_last_poll_timestamp_seconds", labels) >= started
    oldest = gw.metric("swgw_inbox_oldest_message_received_timestamp_seconds", labels)
    assert oldest == datetime.fromisoformat(got["messages"][0]["received_at"]).timestamp()

    def depth(state: str) -> float:
        return gw.metric("swgw_inbox_messages", {"inbox": "th-inbox", "state": state})

    await until(lambda: (depth("waiting"), depth("leased")) == (1, 1), what="1 waiting and 1 leased reported")
    await ack(gw, OTHER_TOKEN, ["GAUGE-1"])
    (_, rest) = await pull(gw, OTHER_TOKEN)
    await ack(gw, OTHER_TOKEN, [m["message_id"] for m in rest["messages"]])
    assert (await queue_counts(gw, "th-inbox"))[0] == 0


async def test_an_inbox_has_no_delivery_worker_and_the_admin_api_says_so(gw: RunningGateway) -> None:
    assert set(gw.app[DELIVERY].workers) == set()  # both destinations are inboxes: no HTTP worker
    async with gw.session.post(
        f"{gw.url}/admin/destinations/th-inbox/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as r:
        assert r.status == 409
        assert "pull inbox" in await r.text()


async def test_a_long_poll_waits_on_past_an_acknowledged_copy(short_gw: RunningGateway) -> None:
    gw = short_gw  # lease_s = 1
    await send(gw, "TH-NSW", "SKIP-1")
    (_, got) = await pull(gw, OTHER_TOKEN)
    await ack(gw, OTHER_TOKEN, [m["message_id"] for m in got["messages"]])
    # The acknowledged copy comes back within this poll and is dropped; the poll keeps waiting
    # and returns the next message, sent once the copy is gone.
    polling = asyncio.create_task(pull(gw, OTHER_TOKEN, wait_s=LONG_WAIT_S))
    await until_queues(gw, "th-inbox", lambda waiting, leased, consumers: (waiting, leased, consumers) == (0, 0, 1))
    assert not polling.done(), polling.result()
    await send(gw, "TH-NSW", "SKIP-2")
    (_, answer) = await asyncio.wait_for(polling, timeout=LONG_WAIT_S - 5)
    assert [m["message_id"] for m in answer["messages"]] == ["SKIP-2"]


async def until_queues(gw: RunningGateway, inbox: str, ok: Any) -> None:
    for _ in range(400):
        if ok(*await queue_counts(gw, inbox)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{inbox}: {await queue_counts(gw, inbox)}")


async def test_a_leased_copy_carries_its_lease_as_a_ttl_and_a_deadline(gw: RunningGateway) -> None:
    body = await send(gw, "TH-NSW", "TTL-1")
    await pull(gw, OTHER_TOKEN)
    conn = await aio_pika.connect(gw.settings.broker.url.reveal())
    async with conn:
        ch = await conn.channel()
        leased = await ch.get_queue(Names(gw.settings.broker.prefix).leased("th-inbox"), ensure=False)
        copy = await leased.get(no_ack=False)
        try:
            assert copy.body == body
            assert copy.expiration == 300  # lease_s, sent as 300000 ms: the broker returns it after that
            assert (copy.headers or {})["x-swgw-message-id"] == "TTL-1"
            assert (copy.headers or {})["x-swgw-lease-deadline"]
        finally:
            await copy.nack(requeue=True)
