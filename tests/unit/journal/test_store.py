"""The journal store as intake's store of seen ids: claim, confirm, release, and the record they write.

Every test runs on SQLite and on PostgreSQL (conftest.py).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError
from gateway.journal.model import Event, EventKind, MessageFilter, Status
from gateway.journal.postgres import PostgresStore
from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Arrival, Claimed, InFlight, JournalStore, Receipt, Seen
from gateway.settings.model import Dedup, JournalSettings, Secret
from tests.helpers import ROOT, free_port
from tests.unit.journal.stores import DAY, T0, Stores, arrival, queued, receipt_of

RECEIPT = receipt_of(arrival())


async def test_claim_confirm_then_a_resend_sees_the_original_receipt(stores: Stores) -> None:
    store = await stores.started()
    claim = await store.claim(arrival(digest="d1"))
    assert isinstance(claim, Claimed)
    assert await store.claim(arrival(digest="d1")) == InFlight()  # pending is not seen
    assert await store.confirm(claim, RECEIPT)
    again = await store.claim(arrival(digest="d2"))
    assert again == Seen(replace(RECEIPT, duplicate=True), "d1")
    # the key is (sender, id): another sender's M-1 is a different message
    assert isinstance(await store.claim(arrival(sender="TH-NSW", digest="d1")), Claimed)


async def test_a_pending_claim_turns_a_concurrent_post_away_and_release_deletes_the_record(stores: Stores) -> None:
    store = await stores.started()
    claim = await store.claim(arrival())
    assert isinstance(claim, Claimed)
    assert await store.claim(arrival()) == InFlight()
    await store.release(claim)
    assert await store.message("VN-NSW", "M-1") is None  # nothing was promised: nothing is kept
    assert await store.history("VN-NSW", "M-1") == []
    assert isinstance(await store.claim(arrival()), Claimed)


async def test_simultaneous_claims_from_several_replicas_have_exactly_one_winner(stores: Stores) -> None:
    replicas = [await stores.started() for _ in range(3)]
    results = await asyncio.gather(*[replicas[i % 3].claim(arrival("RACE")) for i in range(30)])
    winners = [r for r in results if isinstance(r, Claimed)]
    assert len(winners) == 1
    assert all(r == InFlight() for r in results if not isinstance(r, Claimed))
    assert await replicas[1].confirm(winners[0], replace(RECEIPT, message_id="RACE"))
    later = await asyncio.gather(*[r.claim(arrival("RACE")) for r in replicas])
    assert all(isinstance(r, Seen) for r in later)


async def test_a_stale_claim_is_taken_over_and_its_owner_can_no_longer_confirm_or_release(stores: Stores) -> None:
    store = await stores.started()
    old = await store.claim(arrival())
    assert isinstance(old, Claimed)
    stores.clock.now += 59
    assert await store.claim(arrival()) == InFlight()
    stores.clock.now += 2  # past claim_timeout_s = 60: the owner died between confirm and record
    new = await store.claim(arrival())
    assert isinstance(new, Claimed)
    assert new.token != old.token
    await store.release(old)  # must not delete the new owner's claim
    assert await store.claim(arrival()) == InFlight()
    assert not await store.confirm(old, RECEIPT)
    assert await store.confirm(new, RECEIPT)


async def test_a_resend_after_the_window_is_a_new_message_and_the_old_events_stay(stores: Stores) -> None:
    store = await stores.started()
    await queued(store, arrival())
    await store.write([Event(EventKind.DELIVERED, T0 + 5, "VN-NSW", "M-1", "vnaccs", status=200)])
    stores.clock.now += 7 * DAY - 1
    assert isinstance(await store.claim(arrival()), Seen)
    stores.clock.now += 2
    later = arrival(digest="d2", received=stores.clock.now)
    claim = await store.claim(later)  # out of the window: lazily ignored before any purge
    assert isinstance(claim, Claimed)
    record = await store.message("VN-NSW", "M-1")
    assert record is not None
    assert (record.status, record.attempts, record.delivered_at, record.sha256) == (Status.RECEIVED, 0, None, "d2")
    assert record.received_at == later.received_at
    assert await store.confirm(claim, receipt_of(later))
    history = await store.history("VN-NSW", "M-1")
    # the first life's queued and delivered events stay; the row's receipt is the new life's
    assert [(e.kind, e.at) for e in history] == [
        (EventKind.QUEUED, T0),
        (EventKind.DELIVERED, T0 + 5),
        (EventKind.RECEIVED, later.received),
        (EventKind.QUEUED, stores.clock.now),
    ]


async def test_a_new_instance_on_the_same_store_remembers(stores: Stores) -> None:
    first = await stores.started()
    await queued(first, arrival())
    await first.close()
    second = await stores.started()  # a restarted gateway
    assert await second.claim(arrival()) == Seen(replace(RECEIPT, duplicate=True), "d")


async def test_postgres_down_is_a_store_error_not_a_hang_and_start_up_survives() -> None:
    settings = Dedup(
        backend="postgres", dsn=Secret(f"postgresql://swgw:swgw@127.0.0.1:{free_port()}/swgw_test"), timeout_s=0.5
    )
    store = PostgresStore(settings)
    await store.start()  # the gateway must come up while PostgreSQL is down
    try:
        with pytest.raises(StoreError, match="postgres"):
            await asyncio.wait_for(store.claim(arrival()), timeout=5)
        with pytest.raises(StoreError, match="postgres"):
            await asyncio.wait_for(store.write([Event(EventKind.CIRCUIT, T0, destination="x")]), timeout=5)
    finally:
        await store.close()


# --- the record: written by the claim, moved by the confirm ----------------------------------------


def _count_trips(store: JournalStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts round trips: SQLite thread hops (`_run`), PostgreSQL statements (`_call`)."""
    trips: list[str] = []
    name = "_run" if isinstance(store, SqliteStore) else "_call"
    original = getattr(store, name)

    async def counting(*args: Any, **kwargs: Any) -> Any:
        trips.append(name)
        return await original(*args, **kwargs)

    monkeypatch.setattr(store, name, counting)
    return trips


async def test_the_claim_writes_the_whole_record_in_its_one_statement(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores.started()
    a = arrival(size=4321, digest="ab" * 32)
    trips = _count_trips(store, monkeypatch)
    statements: list[str] = []
    if isinstance(store, SqliteStore):
        assert store._db is not None
        store._db.set_trace_callback(statements.append)
    claim = await store.claim(a)
    assert isinstance(claim, Claimed)
    assert len(trips) == 1  # as before the journal: one round trip per claim
    if isinstance(store, SqliteStore):
        writes = [s for s in statements if not s.startswith(("SELECT", "BEGIN", "COMMIT"))]
        assert len(writes) == 1
        assert writes[0].startswith("INSERT OR REPLACE")
    record = await store.message("VN-NSW", "M-1")
    assert record is not None
    assert (record.sender, record.message_id, record.message_type, record.receiver) == (
        "VN-NSW",
        "M-1",
        "CUSDEC",
        "VN-VNACCS",
    )
    assert (record.destination, record.size, record.sha256, record.received_at) == (
        "vnaccs",
        4321,
        "ab" * 32,
        a.received_at,
    )
    assert (record.status, record.attempts, record.delivered_at, record.parked_reason) == (
        Status.RECEIVED,
        0,
        None,
        None,
    )
    # no 202 yet: the history is the receipt alone, and it is the row, not an event written
    assert [e.kind for e in await store.history("VN-NSW", "M-1")] == [EventKind.RECEIVED]
    assert [e async for e in store.events(0, 4e9)] == []


async def test_the_confirm_queues_the_record_and_appends_its_event_in_one_round_trip(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores.started()
    a = arrival(received=T0 - 0.25)
    claim = await store.claim(a)
    assert isinstance(claim, Claimed)
    stores.clock.now += 0.5
    trips = _count_trips(store, monkeypatch)
    assert await store.confirm(claim, receipt_of(a))
    assert len(trips) == 1
    record = await store.message("VN-NSW", "M-1")
    assert record is not None
    assert record.status is Status.QUEUED
    history = await store.history("VN-NSW", "M-1")
    assert [(e.kind, e.destination) for e in history] == [(EventKind.RECEIVED, "vnaccs"), (EventKind.QUEUED, "vnaccs")]
    assert [e.at for e in history] == pytest.approx([T0 - 0.25, T0 + 0.5])


async def test_a_confirm_after_delivery_moved_the_status_keeps_it(stores: Stores) -> None:
    """The broker may hand the message to a worker before intake's confirm runs."""
    store = await stores.started()
    claim = await store.claim(arrival())
    assert isinstance(claim, Claimed)
    await store.write([Event(EventKind.DELIVERED, T0 + 0.1, "VN-NSW", "M-1", "vnaccs", status=200)])
    assert await store.confirm(claim, RECEIPT)
    record = await store.message("VN-NSW", "M-1")
    assert record is not None
    assert record.status is Status.DELIVERED


async def test_with_the_journal_off_the_confirm_appends_no_events(stores: Stores) -> None:
    store = await stores.started(journal=JournalSettings(enabled=False))
    await queued(store, arrival())
    assert [e async for e in store.events(0, 4e9)] == []
    await store.close()
    on = await stores.started()  # the journal switched on: the same store starts journaling
    await queued(on, arrival("M-2"))
    await on.close()
    off = await stores.started(journal=JournalSettings(enabled=False))  # and off again
    await queued(off, arrival("M-3"))
    assert [(e.kind, e.message_id) async for e in off.events(0, 4e9)] == [(EventKind.QUEUED, "M-2")]
    record = await off.message("VN-NSW", "M-1")
    assert record is not None
    assert record.status is Status.QUEUED


# --- migration of tables an earlier version wrote -----------------------------------------------


OLD_ROW = ("VN-NSW", "OLD-1", "queued", T0, "vnaccs", "2026-11-20T00:00:00.000Z")


async def _old_table(store: JournalStore, *, digest: bool) -> None:
    """Before the store starts: its table as an earlier version wrote it, with one queued entry OLD-1.

    digest=False: from before body digests; digest=True: the last version before the journal.
    """
    cols = "sender, message_id, state, token, at, destination, received_at" + (", digest" if digest else "")
    values = OLD_ROW + (("e" * 64,) if digest else ())
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        with db:
            db.execute(
                f'CREATE TABLE "{store.table}" (sender TEXT NOT NULL, message_id TEXT NOT NULL, state TEXT NOT NULL, '
                "token TEXT, at REAL NOT NULL, destination TEXT, received_at TEXT, "
                + ("digest TEXT NOT NULL, " if digest else "")
                + "PRIMARY KEY (sender, message_id))"
            )
            db.execute(
                f'INSERT INTO "{store.table}" ({cols}) VALUES (?, ?, ?, NULL, ?, ?, ?{", ?" if digest else ""})', values
            )
        db.close()
        return
    assert isinstance(store, PostgresStore)
    import asyncpg

    conn = await asyncpg.connect(store.dsn, timeout=5)
    try:
        await conn.execute(
            f'CREATE TABLE "{store.table}" (sender text NOT NULL, message_id text NOT NULL, state text NOT NULL, '
            "token text, at timestamptz NOT NULL, destination text, received_at text, "
            + ("digest text NOT NULL, " if digest else "")
            + "PRIMARY KEY (sender, message_id))"
        )
        await conn.execute(
            f'INSERT INTO "{store.table}" ({cols}) VALUES ($1, $2, $3, NULL, to_timestamp($4), $5, $6'
            + (", $7)" if digest else ")"),
            *values,
        )
    finally:
        await conn.close()


async def test_a_table_from_before_digests_is_migrated_in_place_and_its_entries_have_no_digest(stores: Stores) -> None:
    store = stores.make()
    await _old_table(store, digest=False)
    await store.start()
    # the old entry is still there, its content unknown: Seen with no digest, never a conflict
    assert await store.claim(arrival("OLD-1", "d-new")) == Seen(
        Receipt("OLD-1", "vnaccs", "2026-11-20T00:00:00.000Z", duplicate=True), None
    )
    claim = await store.claim(arrival("NEW-1", "d1"))  # new entries carry their digest
    assert isinstance(claim, Claimed)
    assert await store.confirm(claim, replace(RECEIPT, message_id="NEW-1"))
    assert await store.claim(arrival("NEW-1", "d2")) == Seen(replace(RECEIPT, message_id="NEW-1", duplicate=True), "d1")
    second = stores.make()  # another process or replica starting on the migrated table: nothing to do
    await second.start()
    assert isinstance(await second.claim(arrival("OLD-1")), Seen)


async def test_the_dedup_table_of_the_version_before_the_journal_becomes_the_record_table(stores: Stores) -> None:
    store = stores.make()
    await _old_table(store, digest=True)
    await store.start()
    old = await store.message("VN-NSW", "OLD-1")
    assert old is not None  # what was known of it: queued, received when it was recorded
    assert (old.status, old.attempts, old.received_at, old.destination) == (
        Status.QUEUED,
        0,
        "2026-11-20T00:00:00.000Z",
        "vnaccs",
    )
    assert old.sha256 == "e" * 64
    assert isinstance(await store.claim(arrival("OLD-1", "e" * 64)), Seen)  # still a duplicate
    await store.write([Event(EventKind.DELIVERED, T0 + 1, "VN-NSW", "OLD-1", "vnaccs", status=200)])
    page = await store.search(MessageFilter(destination="vnaccs"))
    assert [(r.message_id, r.status) for r in page.records] == [("OLD-1", Status.DELIVERED)]


# --- SQLite: calls from concurrent requests share thread hops ----------------------------------


async def test_sqlite_calls_from_concurrent_requests_share_thread_hops_and_keep_their_own_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(Dedup(path=tmp_path / "batch.sqlite3"))
    await store.start()
    hops: list[int] = []
    original = store._locked_batch

    def counting(batch):  # type: ignore[no-untyped-def]
        hops.append(len(batch))
        return original(batch)

    monkeypatch.setattr(store, "_locked_batch", counting)
    try:
        results = await asyncio.gather(*(store.claim(arrival(f"B-{i % 25}")) for i in range(50)))
        assert sum(hops) == 50
        assert len(hops) < 50  # batched: fewer thread hops than calls
        claimed = [r for r in results if isinstance(r, Claimed)]
        assert sorted(c.message_id for c in claimed) == sorted(f"B-{i}" for i in range(25))  # one claim per id
        assert all(isinstance(r, InFlight) for r in results if not isinstance(r, Claimed))

        def boom() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        both: list[object] = await asyncio.gather(store.claim(arrival("B-0")), store._run(boom), return_exceptions=True)
        ok, bad = both
        assert ok == InFlight()  # still pending — and unaffected by its neighbour's failure
        assert isinstance(bad, StoreError)
        assert "disk I/O error" in str(bad)
    finally:
        await store.close()


async def test_sqlite_a_call_that_ends_the_batch_transaction_fails_the_calls_before_it_too(tmp_path: Path) -> None:
    # SQLite rolls a whole transaction back on some errors (disk full, I/O): the calls of the
    # batch before the failing one are then undone, and must not be reported written.
    store = SqliteStore(Dedup(path=tmp_path / "batch.sqlite3"))
    await store.start()
    try:

        def ends_the_transaction() -> None:
            store._conn().execute("ROLLBACK")  # what SQLite does by itself on such an error
            raise sqlite3.OperationalError("database or disk is full")

        first, bad = await asyncio.gather(
            store.claim(arrival("T-1")), store._run(ends_the_transaction), return_exceptions=True
        )
        assert isinstance(bad, StoreError)
        assert isinstance(first, StoreError), f"reported {first!r} for a claim that was rolled back"
        assert await store.message("VN-NSW", "T-1") is None  # indeed not written
        assert isinstance(await store.claim(arrival("T-1")), Claimed)  # and the store goes on
    finally:
        await store.close()


async def test_sqlite_open_retries_while_another_process_holds_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `swgw serve --workers 2` on a new file: SQLite may answer "database is locked" to one of
    # the two at once, without waiting (CI saw a worker fail to start). The open is retried.
    import gateway.journal.sqlite as module

    real, refusals = module.create_schema, [sqlite3.OperationalError("database is locked")] * 3

    def contended(*args: object, **kw: object) -> None:
        if refusals:
            raise refusals.pop()
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "create_schema", contended)
    store = SqliteStore(Dedup(path=tmp_path / "new.sqlite3"))
    await store.start()
    try:
        assert not refusals
        assert isinstance(await store.claim(arrival("O-1")), Claimed)
    finally:
        await store.close()

    def broken(*args: object, **kw: object) -> None:
        raise sqlite3.OperationalError("no such column: nope")  # not contention: raised at once

    monkeypatch.setattr(module, "create_schema", broken)
    with pytest.raises(StoreError, match="no such column"):
        await SqliteStore(Dedup(path=tmp_path / "other.sqlite3")).start()


def test_the_arrival_of_a_message_is_its_record() -> None:
    from gateway.messages import QueuedMessage

    m = QueuedMessage("M-1", None, "CUSDEC", "VN-NSW", "VN-VNACCS", "vnaccs", "2027-01-15T08:00:00.000Z", b"<x/>")
    a = Arrival.of(m, now=0.0)
    assert (a.size, a.received) == (4, T0)
    assert a.sha256 == hashlib.sha256(b"<x/>").hexdigest()
    assert (a.sender, a.message_type, a.receiver, a.destination) == ("VN-NSW", "CUSDEC", "VN-VNACCS", "vnaccs")
    assert Arrival.of(replace(m, received_at="garbage"), now=5.0).received == 5.0


def test_the_journal_imports_no_stage_but_the_kernel_and_a_sqlite_gateway_never_loads_asyncpg() -> None:
    folder = ROOT / "gateway" / "journal"
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.startswith("gateway.intake")}, f"{path.name} imports intake"
    code = "import sys, gateway.runtime.app; assert 'asyncpg' not in sys.modules, 'asyncpg loaded at import'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


async def test_a_row_written_by_a_replica_of_the_previous_version_still_reads(stores: Stores) -> None:
    """A rolling upgrade: an old replica's claim sets no status, no received, no record columns."""
    store = await stores.started()
    await queued(store, arrival())
    sql = f'UPDATE "{store.table}" SET status = NULL, message_type = NULL, size = NULL, updated_at = NULL'  # type: ignore[attr-defined]
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        with db:
            db.execute(sql)
        db.close()
    else:
        assert isinstance(store, PostgresStore)
        import asyncpg

        conn = await asyncpg.connect(store.dsn, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    record = await store.message("VN-NSW", "M-1")
    assert record is not None
    assert (record.status, record.message_type, record.size, record.updated_at) == (
        Status.QUEUED,
        "",
        0,
        RECEIPT.received_at,
    )
