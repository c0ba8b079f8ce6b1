"""Retention: records and events are kept `retention_days`, apart from the dedup window, and purged
in a way that never blocks intake (SQLite: short batches; PostgreSQL: whole partitions detached
concurrently)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.journal.model import Event, EventKind, Status
from gateway.journal.postgres import PostgresStore
from gateway.journal.postgres_schema import partition_name
from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Claimed, Receipt, Seen
from gateway.settings.model import JournalSettings
from tests.unit.journal.stores import DAY, T0, Stores, arrival, queued, receipt_of, until

MONTH_SETTINGS = JournalSettings(retention_days=30)


def circuit(at: float, state: str = "open") -> Event:
    return Event(EventKind.CIRCUIT, at, destination="vnaccs", detail=state)


async def _partition_exists(store: PostgresStore, at: float) -> bool:
    from gateway.journal.postgres_schema import month_of

    name = partition_name(store.events_table, month_of(at))
    exists: bool = await store._call(lambda c: c.fetchval("SELECT to_regclass(quote_ident($1)) IS NOT NULL", name))
    return exists


async def test_records_outlive_the_dedup_window_and_go_with_their_events_after_retention(stores: Stores) -> None:
    store = await stores.started(journal=MONTH_SETTINGS)
    await queued(store, arrival("OLD"))
    stores.clock.now = T0 + 8 * DAY  # OLD is out of the dedup window, well within retention
    stale = await store.claim(arrival("STALE", received=stores.clock.now))
    assert isinstance(stale, Claimed)
    await queued(store, arrival("FRESH", received=stores.clock.now))
    await store.write([circuit(T0 + 26 * DAY)])
    stores.clock.now += 61
    assert await store.purge() == 1  # the stale claim only
    assert await store.message("VN-NSW", "STALE") is None
    old = await store.message("VN-NSW", "OLD")
    assert old is not None
    assert old.status is Status.QUEUED

    stores.clock.now = T0 + 35 * DAY  # OLD is past retention, FRESH is not
    await store.purge()
    assert await store.message("VN-NSW", "OLD") is None
    assert await store.message("VN-NSW", "FRESH") is not None
    old_events = await store.history("VN-NSW", "OLD")
    if isinstance(store, SqliteStore):
        assert old_events == []  # deleted row by row
    else:
        assert [e.kind for e in old_events] == [EventKind.QUEUED]  # its month is not wholly past retention yet

    stores.clock.now = T0 + 70 * DAY
    await store.purge()
    assert await store.message("VN-NSW", "FRESH") is None
    assert await store.history("VN-NSW", "OLD") == []
    assert await store.history("VN-NSW", "FRESH") == []
    kept = await store.destination_events(T0, T0 + 100 * DAY)
    if isinstance(store, PostgresStore):
        assert not await _partition_exists(store, T0)  # January dropped whole
        assert await _partition_exists(store, T0 + 26 * DAY)  # February holds events still kept
        assert [e.at for e in kept] == [T0 + 26 * DAY]
    else:
        assert kept == []  # 44 days old: past retention


async def test_with_the_journal_off_records_go_once_out_of_the_window_as_before(stores: Stores) -> None:
    store = await stores.started(journal=JournalSettings(enabled=False))
    await queued(store, arrival("M-1"))
    stores.clock.now += 7 * DAY - 1
    assert await store.purge() == 0
    assert isinstance(await store.claim(arrival("M-1")), Seen)
    stores.clock.now += 2
    assert await store.purge() == 1
    assert await store.message("VN-NSW", "M-1") is None


async def test_the_purge_is_idempotent_and_safe_from_two_replicas_at_once(stores: Stores) -> None:
    a = await stores.started(journal=MONTH_SETTINGS)
    b = await stores.started(journal=MONTH_SETTINGS)
    for i in range(30):
        await queued(a, arrival(f"M-{i}"))
    await a.write([circuit(T0 - 200 * DAY), circuit(T0)])
    stores.clock.now = T0 + 40 * DAY
    counts = await asyncio.gather(a.purge(), b.purge())
    assert sum(counts) >= 30
    assert await a.message("VN-NSW", "M-0") is None
    assert list(await asyncio.gather(a.purge(), b.purge())) == [0, 0]


# --- never blocking intake ---------------------------------------------------------------------------


def _old_rows(store: SqliteStore, n: int) -> None:
    db = sqlite3.connect(store.path)
    with db:
        db.executemany(
            f'INSERT INTO "{store.table}" (sender, message_id, state, at, digest, destination, received_at, '
            "received, status, updated_at) VALUES ('VN-NSW', ?, 'queued', ?, 'd', 'vnaccs', '', ?, 'queued', ?)",
            [(f"OLD-{i}", T0 - 400 * DAY, T0 - 400 * DAY, T0 - 400 * DAY) for i in range(n)],
        )
        db.executemany(
            f"INSERT INTO \"{store.events_table}\" (sender, message_id, at, kind) VALUES ('VN-NSW', ?, ?, 'queued')",
            [(f"OLD-{i}", T0 - 400 * DAY) for i in range(n)],
        )
    db.close()


@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)
async def test_sqlite_purges_in_short_batches_and_a_claim_runs_between_two_of_them(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores.started(journal=MONTH_SETTINGS, purge_batch=100)
    assert isinstance(store, SqliteStore)
    _old_rows(store, 3000)
    batches: list[int] = []
    original = store._delete

    async def counting(sql: str, args: object) -> int:
        deleted = await original(sql, args)  # type: ignore[arg-type]
        batches.append(deleted)
        return deleted

    monkeypatch.setattr(store, "_delete", counting)
    purge = asyncio.create_task(store.purge())
    await until(lambda: bool(batches))  # the purge is under way
    claim = await store.claim(arrival("NEW"))
    assert isinstance(claim, Claimed)
    assert not purge.done()  # intake got in while the purge was running...
    assert len(batches) <= 3  # ...after at most the batch in flight, not after the whole purge
    assert await store.confirm(claim, _receipt("NEW"))
    assert await purge == 6000
    assert len(batches) == 62  # 30 + 30 full batches, and one short one each
    assert await store.message("VN-NSW", "NEW") is not None


def _receipt(message_id: str) -> Receipt:
    return receipt_of(arrival(message_id))


@pytest.mark.parametrize("stores", ["postgres"], indirect=True)
async def test_postgres_drops_a_partition_past_retention_without_blocking_intake(stores: Stores) -> None:
    store = await stores.started(journal=MONTH_SETTINGS)
    assert isinstance(store, PostgresStore)
    old = T0 - 100 * DAY
    await store.write([circuit(old), circuit(old + 1, "closed")])  # its partition is made on demand
    assert await _partition_exists(store, old)
    import asyncpg

    # A long report reading the events table: a plain DROP would queue behind it, and every
    # insert into the table would queue behind the DROP.
    reader = await asyncpg.connect(store.dsn, timeout=5)
    try:
        tx = reader.transaction()
        await tx.start()
        await reader.fetchval(f'SELECT count(*) FROM "{store.events_table}"')
        purge = asyncio.create_task(store.purge())

        async def intake() -> None:
            await queued(store, arrival("DURING"))
            await store.write([Event(EventKind.ATTEMPT, T0 + 1, "VN-NSW", "DURING", "vnaccs", status=200)])

        await _detach_waiting(store)  # the detach is under way, waiting for the reader to finish
        await asyncio.wait_for(intake(), timeout=5)  # intake goes on while the detach waits
        assert not purge.done()
        await tx.rollback()
        await asyncio.wait_for(purge, timeout=30)
    finally:
        await reader.close()
    assert not await _partition_exists(store, old)
    assert await store.destination_events(old - 1, old + 10) == []
    record = await store.message("VN-NSW", "DURING")
    assert record is not None
    assert record.attempts == 1


async def _detach_waiting(store: PostgresStore) -> None:
    """Until the purge's partition DDL (DETACH, or DROP) is running in its own session."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE (query LIKE '%DETACH PARTITION%' OR query LIKE 'DROP TABLE%') "
        "AND state = 'active' AND pid <> pg_backend_pid()"
    )
    async with asyncio.timeout(10):
        while not await store._call(lambda c: c.fetchval(query)):  # noqa: ASYNC110 - state of another session
            await asyncio.sleep(0.05)
