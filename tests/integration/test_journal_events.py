"""Every event of a message's life, journaled where it happens, against the real RabbitMQ, SQLite
and PostgreSQL: a history through an outage in order with the circuit's open period around it,
parked then replayed (admin API and `swgw replay` in another process) then delivered, duplicates
and conflicts, hand-backs when the circuit opens, the last requeue before the delivery limit
journaled dead-lettered, and the consistency rule: with the journal store down a delivered
message is not acked, so a crash then loses neither the message nor its event."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.topology import Names
from gateway.delivery.circuit import CircuitState
from gateway.errors import StoreError
from gateway.journal.model import Event, EventKind, JournalReader, MessageRecord, Status
from gateway.journal.writer import BatchWriter, NullWriter
from gateway.messages import QueuedMessage
from gateway.operations.messages import open_reader
from gateway.runtime.app import DELIVERY, JOURNAL, JOURNAL_READER
from gateway.settings.model import Settings
from gateway.tools.simulator import Simulator
from tests.helpers import CUSDEC_BODY as BODY
from tests.helpers import (
    ROOT,
    RunningGateway,
    admin,
    config_doc,
    drop_pg_table,
    fast_destination,
    get_all,
    post_many,
    require_postgres,
    run_gateway,
    until,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration
K = EventKind
SENDER = "VN-NSW"

Make = Callable[..., Settings]


@pytest.fixture(params=["sqlite", "postgres"])
async def make(
    request: pytest.FixtureRequest, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> AsyncIterator[Make]:
    """Settings with one fast destination at the simulator, on the store of the param."""
    made: list[Settings] = []

    def build(**dest: Any) -> Settings:
        doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim, **dest)])
        if request.param == "postgres":
            doc["dedup"] = {"backend": "postgres", "dsn": require_postgres()}
        s = write_settings(tmp_path, doc)
        cleanup.append(s)
        made.append(s)
        return s

    yield build
    if request.param == "postgres" and made:
        await drop_pg_table(made[0].dedup.table)


async def histories(gw: RunningGateway, ids: list[str]) -> dict[str, list[Event]]:
    await gw.app[JOURNAL].flush()  # type: ignore[attr-defined]  # posted attempts too
    reader = gw.app[JOURNAL_READER]
    return {mid: await reader.history(SENDER, mid) for mid in ids}


async def record(reader: JournalReader, mid: str) -> MessageRecord:
    found = await reader.message(SENDER, mid)
    assert found is not None, mid
    return found


def kinds(history: list[Event]) -> list[EventKind]:
    return [e.kind for e in history]


async def test_a_history_through_an_outage_in_order_inside_the_circuits_open_period(make: Make, sim: Simulator) -> None:
    settings = make()
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        start = time.time()
        # Paused while posting: every `queued` is committed before the first attempt starts.
        await worker.pause()
        await sim.set_mode("down")  # connection refused, the health URL too
        ids = await post_many(gw, 5, "OUT")
        await worker.resume()
        await until(lambda: worker.breaker.state is CircuitState.OPEN, what="the circuit opens")
        await until(lambda: worker.inflight == 0, what="every message handed back to its queue")
        await sim.set_mode("up")
        await sim.wait_for(5, timeout_s=20)
        await until(lambda: worker.delivered_total == 5, what="5 delivered and acked")
        found = await histories(gw, ids)
        reader = gw.app[JOURNAL_READER]
        circuit = await reader.destination_events(start, time.time() + 1, "vnaccs")

        states = [e.detail for e in circuit]
        assert states[0] == "open", states
        assert states[-1] == "closed", states
        assert "half_open" in states, states
        opened, half_open, closed = circuit[0].at, circuit[states.index("half_open")].at, circuit[-1].at
        assert opened < half_open <= closed
        returned = []
        for mid, history in found.items():
            k = kinds(history)
            assert k[:2] == [K.RECEIVED, K.QUEUED], (mid, k)
            assert k[-2:] == [K.ATTEMPT, K.DELIVERED], (mid, k)
            assert set(k[2:-2]) <= {K.ATTEMPT, K.RETURNED}, (mid, k)
            assert [e.at for e in history] == sorted(e.at for e in history), mid
            failed = [e for e in history if e.kind is K.ATTEMPT and e.status is None]
            assert failed, (mid, k)
            assert {e.error for e in failed} == {"refused"}
            assert all(e.duration_s is not None and e.at < half_open for e in failed)
            ok, delivered = history[-2:]
            assert (ok.status, delivered.status) == (200, 200)
            assert delivered.at >= half_open  # delivered once the outage ended
            returned += [e for e in history if e.kind is K.RETURNED]
            rec = await record(reader, mid)
            assert (rec.status, rec.attempts) == (Status.DELIVERED, k.count(K.ATTEMPT))
            assert rec.delivered_at is not None
        # The circuit opened on messages still being retried: they went back to the queue, journaled.
        assert returned
        assert {e.error for e in returned} == {"circuit"}
        assert all(opened <= e.at <= half_open for e in returned)


async def swgw(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`python -m gateway <args> --config <file>`, another process on the same store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWGW_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, "--config", str(settings.path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_parked_then_replayed_by_the_admin_api_and_by_the_cli_then_delivered(make: Make, sim: Simulator) -> None:
    settings = make()
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await worker.pause()
        await sim.set_mode("reject", reject_types=["CUSDEC"])
        ids = await post_many(gw, 2, "PK")
        await worker.resume()
        await until(lambda: worker.parked_total == 2, what="2 parked")
        await gw.app[JOURNAL].flush()  # type: ignore[attr-defined]
        reader = gw.app[JOURNAL_READER]
        for mid in ids:
            rec = await record(reader, mid)
            assert (rec.status, rec.parked_reason, rec.attempts) == (Status.PARKED, "rejected", 1)

        await sim.set_mode("up")
        # Paused while replaying: each `replayed` is committed before its redelivery's events. Unpaused,
        # the CLI's commit (another process) can land after them and move the record back to queued.
        await worker.pause()
        status, body = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={"message_id": "PK-00000"})
        assert (status, body["replayed"]) == (200, 1), body
        code, out, err = await swgw(settings, "replay", "--destination", "vnaccs", "--message-id", "PK-00001")
        assert code == 0, (out, err)
        await worker.resume()
        await sim.wait_for(2, timeout_s=20)
        await until(lambda: worker.delivered_total == 2, what="both delivered after their replay")
        found = await histories(gw, ids)
        for mid, history in found.items():
            assert kinds(history) == [K.RECEIVED, K.QUEUED, K.ATTEMPT, K.PARKED, K.REPLAYED, K.ATTEMPT, K.DELIVERED]
            rejected, parked, replayed = history[2:5]
            assert (rejected.status, rejected.error) == (400, None)
            assert "rejects message type" in rejected.detail  # the backend's answer, excerpted
            assert (parked.status, parked.error) == (400, "rejected")
            assert f"filter: message_id={mid}" in replayed.detail
            rec = await record(reader, mid)
            assert (rec.status, rec.parked_reason, rec.attempts) == (Status.DELIVERED, None, 2)
        assert found["PK-00000"][4].detail.startswith("admin api: POST /admin/destinations/vnaccs/replay")
        assert found["PK-00001"][4].detail.startswith("cli: swgw replay (user ")


async def test_duplicates_and_conflicts_are_journaled_and_a_clean_shutdown_flushes_them(
    make: Make, sim: Simulator
) -> None:
    settings = make()
    body = with_message_id(BODY, "DUP-1")
    async with run_gateway(settings) as gw:
        status, first, _ = await gw.post(body)
        assert status == 202, first
        status, again, _ = await gw.post(body)
        assert (status, again.get("duplicate")) == (200, True)
        status, problem, _ = await gw.post(body + b"\n")  # one more byte: another body under the same id
        assert status == 409, problem
        writer = gw.app[JOURNAL]
        assert isinstance(writer, BatchWriter)
    # Posted, not awaited: the gateway's shutdown (the writer's close) committed them.
    async with open_reader(settings) as reader:
        history = await reader.history(SENDER, "DUP-1")
    marks = [e for e in history if e.kind in (K.DUPLICATE, K.CONFLICT)]
    assert [e.kind for e in marks] == [K.DUPLICATE, K.CONFLICT]
    assert all(e.destination == "vnaccs" for e in marks)
    reused, accepted = hashlib.sha256(body + b"\n").hexdigest(), hashlib.sha256(body).hexdigest()
    assert marks[1].detail == f"sha256 {reused} (accepted: {accepted})"


async def test_a_bug_requeues_and_the_requeue_that_reaches_the_delivery_limit_is_journaled_dead_lettered(
    make: Make, sim: Simulator
) -> None:
    settings = make(delivery_limit=1)
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]

        async def bug(msg: QueuedMessage, attempt: int) -> None:
            raise RuntimeError("a worker bug")

        worker.sender.send = bug  # type: ignore[method-assign,assignment]
        status, receipt, _ = await gw.post(with_message_id(BODY, "DL-1"))
        assert status == 202, receipt
        parking = Names(settings.broker.prefix).parking("vnaccs")

        async def dead_lettered() -> bool:
            return len(await get_all(parking, ack=False)) == 1

        deadline = time.monotonic() + 20
        while not await dead_lettered():
            assert time.monotonic() < deadline, "not dead-lettered into parking"
            await asyncio.sleep(0.1)
        history = (await histories(gw, ["DL-1"]))["DL-1"]
        assert kinds(history) == [K.RECEIVED, K.QUEUED, K.RETURNED, K.DEAD_LETTERED]
        assert history[2].error == "error"
        assert "RuntimeError: a worker bug" in history[2].detail
        assert history[3].error == "delivery_limit"
        rec = await record(gw.app[JOURNAL_READER], "DL-1")
        assert (rec.status, rec.parked_reason) == (Status.DEAD_LETTERED, "delivery_limit")
    assert sim.ids == []


class DownStore:
    """The journal store as the writer sees it while its database is down."""

    async def write(self, events: object) -> None:
        raise StoreError("journal store down (test)")


async def test_with_the_journal_store_down_a_delivered_message_is_held_unacked_and_a_crash_loses_nothing(
    make: Make, sim: Simulator
) -> None:
    # The consistency rule on the real broker: the ack waits for the event. With the store
    # down, the message reaches the backend but is not acked (and not requeued: no second
    # POST); the gateway then stops with the store still down, as good as a crash for the
    # journal. The message must be back in its queue, and be journaled delivered once the
    # store is back. An ack ahead of its event leaves the queue empty and the journal
    # without a `delivered`: this test fails (tried: see the report).
    settings = make()
    queue = Names(settings.broker.prefix).queue("vnaccs")
    async with run_gateway(settings, delivery_stop_timeout_s=0.5) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        writer = gw.app[JOURNAL]
        assert isinstance(writer, BatchWriter)
        writer.store, writer.close_timeout_s = DownStore(), 0.5  # type: ignore[assignment]
        status, receipt, _ = await gw.post(with_message_id(BODY, "HOLD-1"))
        assert status == 202, receipt  # intake's claim and confirm are the store's own statements
        await sim.wait_for(1, timeout_s=15)
        await until(lambda: gw.metric("swgw_journal_write_errors_total") >= 3, what="the writer retrying")
        assert (worker.inflight, worker.delivered_total) == (1, 0)  # held: no ack
        await asyncio.sleep(0.5)
        assert sim.posts_for("HOLD-1") == 1  # not requeued and POSTed again
    left = await get_all(queue, ack=False)
    assert [QueuedMessage.from_amqp(m).message_id for m in left] == ["HOLD-1"]  # never acked
    async with open_reader(settings) as reader:
        assert (await record(reader, "HOLD-1")).status is Status.QUEUED  # no event was written
    async with run_gateway(settings) as gw:
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await until(lambda: worker.delivered_total == 1, what="redelivered and acked")
        history = (await histories(gw, ["HOLD-1"]))["HOLD-1"]
        assert kinds(history) == [K.RECEIVED, K.QUEUED, K.ATTEMPT, K.DELIVERED]
    assert sim.posts_for("HOLD-1") == 2  # at-least-once: the backend drops the copy by its id


@pytest.mark.parametrize("journal", ["disabled", "no store"])
async def test_delivery_works_with_the_journal_off(
    journal: str, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> None:
    doc = config_doc(prefix, destinations=[fast_destination("vnaccs", sim)])
    doc["journal" if journal == "disabled" else "dedup"] = (
        {"enabled": False} if journal == "disabled" else {"backend": "none"}
    )
    settings = write_settings(tmp_path, doc)
    cleanup.append(settings)
    await sim.set_mode("reject", reject_types=["CUSDEC"])
    async with run_gateway(settings) as gw:
        assert isinstance(gw.app[JOURNAL], NullWriter)
        worker = gw.app[DELIVERY].workers["vnaccs"]
        await post_many(gw, 3, "OFF")
        await until(lambda: worker.parked_total == 3, what="parked with the journal off")
        await sim.set_mode("up")
        status, body = await admin(gw, "POST", "/admin/destinations/vnaccs/replay", json={})
        assert (status, body["replayed"]) == (200, 3), body
        await sim.wait_for(3, timeout_s=20)
        await until(lambda: worker.delivered_total == 3, what="delivered with the journal off")
