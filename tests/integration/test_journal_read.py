"""The journal's read side behind a running gateway, real RabbitMQ, SQLite and PostgreSQL, on the
gateway's own events: the partner status API through an outage and a parking, the admin history and
cursor pages, and `swgw messages`, `swgw report` and `swgw reconcile` on a real outage drill."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.journal.model import MessageFilter, Status
from gateway.runtime.app import DELIVERY, JOURNAL_READER
from gateway.settings.model import Settings
from gateway.tools.simulator import Simulator
from tests.helpers import (
    CUSDEC_BODY,
    OTHER_TOKEN,
    TOKEN,
    RunningGateway,
    admin,
    config_doc,
    drop_pg_table,
    fast_destination,
    require_postgres,
    run_gateway,
    sha,
    until,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration
HANOI = timezone(timedelta(hours=7))


@pytest.fixture(params=["sqlite", "postgres"])
async def settings(
    request: pytest.FixtureRequest, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> AsyncIterator[Settings]:
    doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim)])
    if request.param == "postgres":
        doc["dedup"] = {"backend": "postgres", "dsn": require_postgres()}
    s = write_settings(tmp_path, doc)
    cleanup.append(s)
    yield s
    if request.param == "postgres":
        await drop_pg_table(s.dedup.table)


async def status_of(gw: RunningGateway, message_id: str, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with gw.session.get(f"{gw.url}/v1/messages/{message_id}", headers=headers) as resp:
        return resp.status, await resp.text()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


def swgw(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        input=stdin,
    )


def hanoi(unix: float) -> str:
    """An ISO-8601 time with a +07:00 offset, as ops in Hanoi type it."""
    return datetime.fromtimestamp(unix, HANOI).isoformat(timespec="seconds")


async def test_partner_status_through_an_outage_queued_then_delivered_and_others_ids_are_404(
    settings: Settings, sim: Simulator
) -> None:
    async with run_gateway(settings) as gw:
        unknown = await status_of(gw, "S-1")  # not sent yet: the body an unknown id gets
        assert unknown[0] == 404
        problem = json.loads(unknown[1])
        assert (problem["status"], problem["reason"]) == (404, "message_not_found")

        await sim.set_mode("down")
        status, receipt, _ = await gw.post(with_message_id(CUSDEC_BODY, "S-1"))
        assert status == 202, receipt
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await until(lambda: worker.state == "open", what="circuit open")
        code, text = await status_of(gw, "S-1")
        body = json.loads(text)
        assert code == 200
        assert body["status"] in ("queued", "delivering")  # delivering once an attempt is journaled
        assert (body["message_id"], body["message_type"], body["destination"]) == ("S-1", "CUSDEC", "vnaccs")
        assert (body["received_at"], body["delivered_at"]) == (receipt["received_at"], None)

        # Another partner asking for this id gets exactly the body of an id nobody sent: no 403, no hint.
        assert await status_of(gw, "S-1", token=OTHER_TOKEN) == unknown
        assert (await status_of(gw, "S-1", token=None))[0] == 401
        assert (await status_of(gw, "S-1", token="not-a-token"))[0] == 401

        await sim.set_mode("up")
        await sim.wait_for(1, timeout_s=30)

        async def delivered() -> bool:
            return bool(json.loads((await status_of(gw, "S-1"))[1])["status"] == "delivered")

        await eventually(delivered, what="status delivered")
        body = json.loads((await status_of(gw, "S-1"))[1])
        assert body["delivered_at"] is not None
        assert body["delivered_at"] > body["received_at"]
        assert body["attempts"] >= 1
        assert set(body) == {
            "message_id", "status", "message_type", "receiver", "destination",
            "received_at", "delivered_at", "attempts", "updated_at",
        }  # fmt: skip

        # ops: the whole history, oldest first, each event with its ISO-8601 time
        code, full = await admin(gw, "GET", "/admin/messages/VN-NSW/S-1")
        assert code == 200
        kinds = [e["event"] for e in full["history"]]
        # `queued` is when the broker's confirm came back: the first attempt may be quicker than that
        assert kinds[0] == "received"
        assert kinds.count("queued") == 1
        assert kinds[-1] == "delivered"
        assert set(kinds) - {"returned"} == {"received", "queued", "attempt", "delivered"}
        failed = [e for e in full["history"] if e["event"] == "attempt" and "error" in e]
        assert failed, "the refused attempts of the outage are in the history"
        times = [e["at"] for e in full["history"]]
        assert times == sorted(times)
        assert all(t.endswith("Z") for t in times)
        assert full["status"] == "delivered"
        assert full["attempts"] == len([k for k in kinds if k == "attempt"])
        code, missing = await admin(gw, "GET", "/admin/messages/TH-NSW/S-1")
        assert (code, missing["reason"]) == (404, "message_not_found")


async def test_a_rejected_message_is_parked_then_replayed_for_partner_and_ops(
    settings: Settings, sim: Simulator
) -> None:
    await sim.set_mode("up", fail_ids=["P-1"], fail_status=400)
    async with run_gateway(settings) as gw:
        assert (await gw.post(with_message_id(CUSDEC_BODY, "P-1")))[0] == 202
        assert (await gw.post(with_message_id(CUSDEC_BODY, "P-2")))[0] == 202

        async def parked() -> bool:
            return bool(json.loads((await status_of(gw, "P-1"))[1])["status"] == "parked")

        await eventually(parked, what="P-1 parked")
        code, page = await admin(gw, "GET", "/admin/messages?status=parked")
        assert code == 200
        assert [(m["message_id"], m["attempts"], m["delivered_at"]) for m in page["messages"]] == [("P-1", 1, None)]
        assert page["messages"][0]["parked_reason"]
        assert "parked_reason" not in json.loads((await status_of(gw, "P-1"))[1])  # may quote the backend
        history = (await admin(gw, "GET", "/admin/messages/VN-NSW/P-1"))[1]["history"]
        kinds = [e["event"] for e in history]
        # `queued` is written when the broker's confirm is back: delivery may be quicker than that
        assert kinds[0] == "received"
        assert sorted(kinds) == ["attempt", "parked", "queued", "received"]
        assert kinds.index("attempt") < kinds.index("parked")
        assert next(e for e in history if e["event"] == "attempt")["status"] == 400

        # the backend is fixed and ops replay: the partner sees it queued again, then delivered
        await sim.set_mode("up")
        code, done = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={})
        assert (code, done["replayed"]) == (200, 1), done

        async def delivered() -> bool:
            return bool(json.loads((await status_of(gw, "P-1"))[1])["status"] == "delivered")

        await eventually(delivered, what="P-1 delivered after the replay")
        history = (await admin(gw, "GET", "/admin/messages/VN-NSW/P-1"))[1]["history"]
        kinds = [e["event"] for e in history]
        after_park = [k for k in kinds[kinds.index("parked") :] if k != "queued"]  # (a late confirm)
        assert after_park == ["parked", "replayed", "attempt", "delivered"]
        assert "admin api" in history[kinds.index("replayed")]["detail"]


async def test_admin_pages_with_cursors_and_filters_never_skip_or_repeat(settings: Settings) -> None:
    async with run_gateway(settings) as gw:
        for i in range(25):
            assert (await gw.post(with_message_id(CUSDEC_BODY, f"PG-{i:02d}")))[0] == 202
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            code, page = await admin(gw, "GET", f"/admin/messages?partner=VN-NSW&type=CUSDEC&limit=10&cursor={cursor}")
            assert code == 200, page
            seen += [m["message_id"] for m in page["messages"]]
            pages += 1
            if pages == 1:  # newer messages arriving meanwhile go to the front, never into a later page
                assert (await gw.post(with_message_id(CUSDEC_BODY, "PG-LATE")))[0] == 202
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        assert pages == 3
        assert seen == sorted(seen, reverse=True) == [f"PG-{i:02d}" for i in reversed(range(25))]
        code, none = await admin(gw, "GET", "/admin/messages?partner=TH-NSW")
        assert (code, none) == (200, {"messages": [], "next_cursor": None})
        for query, parameter in [
            ("status=lost", "status"),
            ("since=2026-11-23T08:00:00", "since"),
            ("limit=5000", "limit"),
            ("cursor=abc", "cursor"),
            ("sender=VN-NSW", "sender"),
        ]:
            code, problem = await admin(gw, "GET", f"/admin/messages?{query}")
            assert (code, problem["reason"], problem["errors"][0]["path"]) == (400, "bad_parameter", parameter)
            assert problem["detail"].startswith(f"{parameter}: ")
        assert (await admin(gw, "GET", "/admin/messages", token="wrong"))[0] == 401

        # the CLI reads the store directly: the same records, the same pages
        listed = await asyncio.to_thread(
            swgw, gw.settings.path, "messages", "list", "--partner", "VN-NSW", "--limit", "3", "--json"
        )
        assert listed.returncode == 0, listed.stderr
        first = json.loads(listed.stdout)
        assert [m["message_id"] for m in first["messages"]] == ["PG-LATE", "PG-24", "PG-23"]
        more = await asyncio.to_thread(
            swgw, gw.settings.path, "messages", "list", "--limit", "3", "--cursor", first["next_cursor"]
        )
        assert more.returncode == 0, more.stderr
        assert [line.split()[2] for line in more.stdout.splitlines()[1:]] == ["PG-22", "PG-21", "PG-20"]
        assert "next page: --cursor " in more.stderr
        shown = await asyncio.to_thread(swgw, gw.settings.path, "messages", "show", "VN-NSW", "PG-00")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("VN-NSW PG-00: ")
        assert "history:" in shown.stdout
        assert " received" in shown.stdout
        bad = await asyncio.to_thread(swgw, gw.settings.path, "messages", "list", "--status", "lost")
        assert (bad.returncode, bad.stderr.startswith("usage: status: 'lost' is not one of")) == (2, True)
        absent = await asyncio.to_thread(swgw, gw.settings.path, "messages", "show", "VN-NSW", "NOPE")
        assert absent.returncode == 1


async def test_with_the_journal_off_status_and_history_say_so(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    doc: dict[str, Any] = config_doc(prefix)
    doc["journal"] = {"enabled": False}
    s = write_settings(tmp_path, doc)
    cleanup.append(s)
    async with run_gateway(s) as gw:
        code, text = await status_of(gw, "X-1")
        assert (code, json.loads(text)["reason"]) == (404, "journal_disabled")
        assert (await status_of(gw, "X-1", token=None))[0] == 401  # still authenticated first
        code, problem = await admin(gw, "GET", "/admin/messages")
        assert (code, problem["reason"]) == (404, "journal_disabled")
    off = await asyncio.to_thread(swgw, s.path, "messages", "list")
    assert off.returncode == 1
    assert "the journal is off" in off.stderr


async def test_status_lookups_have_their_own_rate_limit(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    partners = [{"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "rate_per_s": 0.01, "burst": 2}]
    s = write_settings(tmp_path, config_doc(prefix, partners=partners))
    cleanup.append(s)
    async with run_gateway(s) as gw:
        assert [(await status_of(gw, "R-1"))[0] for _ in range(2)] == [404, 404]
        async with gw.session.get(f"{gw.url}/v1/messages/R-1", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert (r.status, (await r.json(content_type=None))["reason"]) == (429, "rate_limited")
            assert int(r.headers["Retry-After"]) >= 1
        status, receipt, _ = await gw.post(with_message_id(CUSDEC_BODY, "R-1"))  # sending has its own bucket
        assert status == 202, receipt


async def test_report_and_reconcile_on_an_outage_drill(settings: Settings, sim: Simulator, tmp_path: Path) -> None:
    since = time.time() - 1
    poison = ["DR-28", "DR-29"]
    async with run_gateway(settings) as gw:
        await sim.set_mode("down")  # the backend is down
        ids = [f"DR-{i:02d}" for i in range(30)]
        for mid in ids:
            status, receipt, _ = await gw.post(with_message_id(CUSDEC_BODY, mid))
            assert status == 202, receipt
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await until(lambda: worker.state == "open", what="circuit open")
        for mid in ids[:2]:  # partners re-send while they wait: duplicates, and one changed body (409)
            assert (await gw.post(with_message_id(CUSDEC_BODY, mid)))[0] == 200
        changed = with_message_id(CUSDEC_BODY, "DR-02").replace(b"</Envelope>", b"<!-- v2 --></Envelope>")
        assert (await gw.post(changed))[0] == 409
        await asyncio.sleep(2)  # the outage lasts: the circuit's probes keep failing meanwhile

        await sim.set_mode("up", fail_ids=poison, fail_status=400)  # back, refusing two for good
        await sim.wait_for(28, timeout_s=60)
        await until(lambda: worker.state == "closed", what="circuit closed")
        reader = gw.app[JOURNAL_READER]

        async def settled() -> bool:
            page = await reader.search(MessageFilter(since=since), limit=100)
            return all(r.status in (Status.DELIVERED, Status.PARKED) for r in page.records)

        await eventually(settled, what="every message delivered or parked")
        end = time.time() + 1
        config = gw.settings.path
        window = ("--since", hanoi(since - 1), "--until", hanoi(end + 1))

        text = await asyncio.to_thread(swgw, config, "report", *window)
        assert text.returncode == 0, text.stderr
        print("\n" + text.stdout)
        row = next(line.split() for line in text.stdout.splitlines() if line.startswith("  CUSDEC "))
        assert row[:7] == ["CUSDEC", "30", "28", "2", "0", "2", "1"]  # received .. conflicts
        assert "circuit open " in text.stdout
        assert "(still open)" not in text.stdout
        data = json.loads((await asyncio.to_thread(swgw, config, "report", *window, "--format", "json")).stdout)
        group = data["groups"][0]
        assert {k: group[k] for k in ("destination", "message_type", "received", "delivered", "parked")} == {
            "destination": "vnaccs",
            "message_type": "CUSDEC",
            "received": 30,
            "delivered": 28,
            "parked": 2,
        }
        assert (group["pending"], group["duplicates"], group["conflicts"]) == (0, 2, 1)
        assert group["longest_s"] > 2  # the first messages waited out the outage
        periods = data["circuit_open"]["vnaccs"]
        assert sum(p["duration_s"] for p in periods) > 2
        assert periods
        assert all(not p["still_open"] and not p["open_before_window"] for p in periods)

        rows = await asyncio.to_thread(swgw, config, "report", *window, "--format", "csv", "--destination", "vnaccs")
        table = list(csv.DictReader(io.StringIO(rows.stdout)))
        assert list(table[0]) == [
            "message_id", "sender", "message_type", "destination", "status", "received_at", "delivered_at", "attempts",
        ]  # fmt: skip
        assert sorted(r["message_id"] for r in table) == ids
        assert {r["message_id"]: r["status"] for r in table if r["status"] != "delivered"} == dict.fromkeys(
            poison, "parked"
        )
        assert all(r["delivered_at"] for r in table if r["status"] == "delivered")

        held = tmp_path / "backend-ids.txt"
        held.write_text("\n".join(sim.ids) + "\n", encoding="utf-8")
        same = await asyncio.to_thread(
            swgw, config, "reconcile", "--destination", "vnaccs", *window, "--backend-ids", str(held)
        )
        assert same.returncode == 0, same.stdout + same.stderr
        assert "the gateway delivered 28, the backend lists 28" in same.stdout

        # the backend lost one and holds one the gateway parked: CSV with a BOM, as a spreadsheet writes it
        listed = [i for i in sim.ids if i != "DR-05"] + ["DR-28", "DR-07"]
        lost = tmp_path / "backend.csv"
        lost.write_text("\ufeffreceived_at,message_id\n" + "".join(f"x,{i}\n" for i in listed), encoding="utf-8")
        differ = await asyncio.to_thread(
            swgw, config, "reconcile", "--destination", "vnaccs", *window, "--backend-ids", str(lost), "--json"
        )
        assert differ.returncode == 1, differ.stderr
        result = json.loads(differ.stdout)
        assert result["delivered_unknown_to_backend"] == ["DR-05"]
        assert result["at_backend_not_delivered_by_gateway"] == [{"message_id": "DR-28", "gateway_status": "parked"}]
        assert (result["backend_ids_repeated"], result["equal"]) == (1, False)

        usage = [
            ("--backend-ids", str(tmp_path / "missing.txt"), "--since", hanoi(since)),
            ("--backend-ids", str(held), "--since", "yesterday"),
            ("--backend-ids", str(held), "--since", "2027-01-15T08:00:00"),
        ]
        for ids_file, path, flag, value in usage:
            bad = await asyncio.to_thread(
                swgw, config, "reconcile", "--destination", "vnaccs", "--until", hanoi(end), flag, value, ids_file, path
            )
            assert bad.returncode == 2, (bad.stdout, bad.stderr)
            assert bad.stderr.startswith("usage: ")
        nowhere = await asyncio.to_thread(
            swgw, config, "reconcile", "--destination", "nowhere", *window, "--backend-ids", str(held)
        )
        assert (nowhere.returncode, nowhere.stderr.split(":")[:2]) == (2, ["usage", " destination"])
