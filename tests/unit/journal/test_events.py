"""Events and the reader: status moves per batch, history, search with a cursor, windows, destination events.

Every test runs on SQLite and on PostgreSQL (conftest.py).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from gateway.errors import StoreError
from gateway.journal import reading
from gateway.journal.model import STATUS_AFTER, Event, EventKind, MessageFilter, MessageRecord, Status
from gateway.journal.postgres import PostgresStore
from gateway.journal.queries import InvalidCursor
from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Claimed, JournalStore
from gateway.timeutil import iso_unix
from tests.unit.journal.stores import T0, Stores, arrival, queued, receipt_of


def ev(kind: EventKind, at: float, message_id: str = "M-1", **kw: object) -> Event:
    return Event(kind, at, "VN-NSW", message_id, "vnaccs", **kw)  # type: ignore[arg-type]


async def record(store: JournalStore, message_id: str = "M-1") -> MessageRecord:
    found = await store.message("VN-NSW", message_id)
    assert found is not None
    return found


async def test_a_message_s_life_moves_its_status_attempts_delivery_and_parking(stores: Stores) -> None:
    store = await stores.started()
    await queued(store, arrival())
    await store.write([ev(EventKind.ATTEMPT, T0 + 1, status=503, duration_s=0.2, detail="busy")])
    r = await record(store)
    assert (r.status, r.attempts, r.updated_at) == (Status.DELIVERING, 1, iso_unix(T0 + 1))
    await store.write(
        [ev(EventKind.ATTEMPT, T0 + 2, error="timeout"), ev(EventKind.PARKED, T0 + 2.5, error="rejected")]
    )
    r = await record(store)
    assert (r.status, r.attempts, r.parked_reason) == (Status.PARKED, 2, "rejected")
    await store.write([ev(EventKind.REPLAYED, T0 + 10, detail="replay by admin")])
    r = await record(store)
    assert (r.status, r.parked_reason) == (Status.QUEUED, None)
    await store.write([ev(EventKind.ATTEMPT, T0 + 11, status=200), ev(EventKind.DELIVERED, T0 + 11.5, status=200)])
    r = await record(store)
    assert (r.status, r.attempts, r.delivered_at) == (Status.DELIVERED, 3, iso_unix(T0 + 11.5))
    # delivered is final: a later dead-letter of a redelivered copy leaves it delivered
    await store.write([ev(EventKind.DEAD_LETTERED, T0 + 20, error="dead-lettered:delivery_limit", message_id="M-1")])
    assert (await record(store)).status is Status.DELIVERED


async def test_a_status_never_goes_back_when_events_commit_out_of_order(stores: Stores) -> None:
    # A `swgw replay` in another process can commit `replayed` after the gateway committed the
    # redelivery's `delivered`; a crash repeats attempts of a message already delivered.
    store = await stores.started()
    await queued(store, arrival())
    await store.write([ev(EventKind.PARKED, T0 + 1, error="rejected")])
    await store.write([ev(EventKind.ATTEMPT, T0 + 3, status=200), ev(EventKind.DELIVERED, T0 + 3.5, status=200)])
    await store.write([ev(EventKind.REPLAYED, T0 + 2, detail="cli: swgw replay")])
    r = await record(store)
    assert (r.status, r.delivered_at) == (Status.DELIVERED, iso_unix(T0 + 3.5))
    await store.write([ev(EventKind.ATTEMPT, T0 + 9, status=200), ev(EventKind.PARKED, T0 + 9.5, error="rejected")])
    r = await record(store)
    assert (r.status, r.attempts, r.parked_reason) == (Status.DELIVERED, 2, None)  # attempts still counted
    history = await store.history("VN-NSW", "M-1")
    assert [e.kind for e in history].count(EventKind.REPLAYED) == 1  # every event kept, in time order


async def test_events_that_move_nothing_are_kept_duplicates_and_conflicts_too(stores: Stores) -> None:
    store = await stores.started()
    await queued(store, arrival())
    await store.write(
        [
            ev(EventKind.DUPLICATE, T0 + 1),
            ev(EventKind.CONFLICT, T0 + 2, detail="sha256 differs"),
            ev(EventKind.RETURNED, T0 + 3, detail="circuit"),
        ]
    )
    assert (await record(store)).status is Status.QUEUED
    history = await store.history("VN-NSW", "M-1")
    assert [e.kind for e in history][2:] == [EventKind.DUPLICATE, EventKind.CONFLICT, EventKind.RETURNED]
    assert history[3] == ev(EventKind.CONFLICT, T0 + 2, detail="sha256 differs")


async def test_history_is_oldest_first_whatever_order_the_events_were_written_in(stores: Stores) -> None:
    store = await stores.started()
    await queued(store, arrival())
    await store.write([ev(EventKind.ATTEMPT, T0 + 5, status=500)])
    await store.write([ev(EventKind.ATTEMPT, T0 + 3, status=502), ev(EventKind.DELIVERED, T0 + 7)])
    await store.write([ev(EventKind.DUPLICATE, T0 + 3)])  # same time as an earlier one: written order breaks ties
    history = await store.history("VN-NSW", "M-1")
    assert [(e.kind, e.at, e.status) for e in history[2:]] == [
        (EventKind.ATTEMPT, T0 + 3, 502),
        (EventKind.DUPLICATE, T0 + 3, None),
        (EventKind.ATTEMPT, T0 + 5, 500),
        (EventKind.DELIVERED, T0 + 7, None),
    ]
    assert await store.history("VN-NSW", "UNKNOWN") == []


async def test_an_attempt_journaled_before_the_confirm_reaches_intake_still_follows_queued(stores: Stores) -> None:
    # Delivery can consume, fail and journal `returned` before intake has processed the broker's
    # confirm (CI saw it): the history must still read received, queued, returned.
    store = await stores.started()
    claim = await store.claim(arrival())
    assert isinstance(claim, Claimed)
    await store.write([ev(EventKind.RETURNED, T0 + 1, detail="a worker bug")])
    stores.clock.now = T0 + 2  # the confirm is processed after the delivery's event
    assert await store.confirm(claim, receipt_of(arrival()))
    history = await store.history("VN-NSW", "M-1")
    assert [e.kind for e in history] == [EventKind.RECEIVED, EventKind.QUEUED, EventKind.RETURNED]
    assert history[1].at == T0  # stamped with the claim, made just before the publish
    assert (await record(store)).status is Status.QUEUED


async def _refuse_boom(store: JournalStore) -> None:
    """Make the database refuse any event whose detail is 'boom' (a failure half-way through a batch)."""
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        with db:
            db.execute(
                f"CREATE TRIGGER boom BEFORE INSERT ON \"{store.events_table}\" WHEN NEW.detail = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        db.close()
        return
    assert isinstance(store, PostgresStore)
    import asyncpg

    conn = await asyncpg.connect(store.dsn, timeout=5)
    try:
        await conn.execute(f"ALTER TABLE \"{store.events_table}\" ADD CONSTRAINT boom CHECK (detail <> 'boom')")
    finally:
        await conn.close()


async def test_a_batch_is_one_transaction_all_or_nothing(stores: Stores) -> None:
    store = await stores.started()
    await queued(store, arrival())
    await _refuse_boom(store)
    with pytest.raises(StoreError):
        await store.write([ev(EventKind.ATTEMPT, T0 + 1), ev(EventKind.DELIVERED, T0 + 2, detail="boom")])
    r = await record(store)
    assert (r.status, r.attempts) == (Status.QUEUED, 0)  # the first event's move was rolled back too
    assert [e.kind for e in await store.history("VN-NSW", "M-1")] == [EventKind.RECEIVED, EventKind.QUEUED]


# --- search: filters and the cursor ---------------------------------------------------------------


async def _messages(store: JournalStore, n: int, *, start: float = T0, step: float = 1.0) -> list[str]:
    ids = []
    for i in range(n):
        mid = f"M-{i:03d}"
        dest = "vnaccs" if i % 2 == 0 else "ecus"
        kind = "CUSDEC" if i % 3 else "ECOO"
        sender = "VN-NSW" if i % 5 else "TH-NSW"
        await queued(store, arrival(mid, sender=sender, destination=dest, message_type=kind, received=start + i * step))
        ids.append(mid)
    return ids


async def test_search_filters_by_status_destination_partner_type_and_time(stores: Stores) -> None:
    store = await stores.started()
    await _messages(store, 20)
    await store.write([ev(EventKind.PARKED, T0 + 100, "M-004", error="rejected")])
    newest_first = [r.message_id for r in (await store.search(MessageFilter())).records]
    assert newest_first == [f"M-{i:03d}" for i in reversed(range(20))]

    async def ids(**kw: object) -> list[str]:
        return [r.message_id for r in (await store.search(MessageFilter(**kw))).records]  # type: ignore[arg-type]

    assert await ids(status=Status.PARKED) == ["M-004"]
    assert await ids(destination="ecus") == [f"M-{i:03d}" for i in reversed(range(1, 20, 2))]
    assert await ids(sender="TH-NSW") == ["M-015", "M-010", "M-005", "M-000"]
    assert await ids(message_type="ECOO") == [f"M-{i:03d}" for i in reversed(range(0, 20, 3))]
    assert await ids(since=T0 + 5, until=T0 + 8) == ["M-007", "M-006", "M-005"]
    assert await ids(destination="vnaccs", message_type="ECOO", since=T0 + 1) == ["M-018", "M-012", "M-006"]
    page = await store.search(MessageFilter(status=Status.DELIVERED))
    assert page.records == []
    assert page.next_cursor is None


async def test_cursor_paging_never_repeats_or_skips_while_new_messages_arrive(stores: Stores) -> None:
    store = await stores.started()
    await _messages(store, 23, step=0.0)  # all received at the same instant: ties broken by (sender, id)
    await queued(store, arrival("SAME-TIME-A", received=T0))
    expected = [r.message_id for r in (await store.search(MessageFilter(), limit=1000)).records]
    assert len(expected) == 24
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.search(MessageFilter(), cursor=cursor, limit=5)
        seen += [r.message_id for r in page.records]
        pages += 1
        # meanwhile: newer messages arrive, and an older one changes status
        await queued(store, arrival(f"NEW-{pages}", received=T0 + pages))
        await store.write([ev(EventKind.DELIVERED, T0 + 50, "M-010")])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected  # newest first, each exactly once
    assert pages == 5


async def test_a_cursor_this_journal_did_not_hand_out_is_refused(stores: Stores) -> None:
    store = await stores.started()
    for bad in ("not-a-cursor", "W10", "eyJhIjogMX0"):
        with pytest.raises(InvalidCursor):
            await store.search(MessageFilter(), cursor=bad)
    assert issubclass(InvalidCursor, ValueError)


# --- windows and destination events ---------------------------------------------------------------


async def test_a_window_streams_every_message_oldest_first_in_chunks(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "WINDOW_CHUNK", 4)  # both stores page through reading.py
    store = await stores.started()
    await _messages(store, 21)
    fetches: list[int] = []
    original = store._fetch  # type: ignore[attr-defined]

    async def counting(sql: str, args: object) -> list[object]:
        rows: list[object] = await original(sql, args)
        fetches.append(len(rows))
        return rows

    monkeypatch.setattr(store, "_fetch", counting)
    window = store.window(T0 + 2, T0 + 19)
    first = await anext(window)
    assert first.message_id == "M-002"
    assert fetches == [4]  # streamed: only the first chunk has been read
    rest = [r.message_id async for r in window]
    assert [first.message_id, *rest] == [f"M-{i:03d}" for i in range(2, 19)]
    assert fetches == [4, 4, 4, 4, 1]
    only = [r.message_id async for r in store.window(T0, T0 + 100, destination="ecus")]
    assert only == [f"M-{i:03d}" for i in range(1, 21, 2)]
    assert [r async for r in store.window(T0 + 1000, T0 + 2000)] == []


async def test_destination_events_are_the_window_s_circuit_changes_and_the_state_before_it(stores: Stores) -> None:
    store = await stores.started()

    def circuit(dest: str, at: float, state: str) -> Event:
        return Event(EventKind.CIRCUIT, at, destination=dest, detail=state)

    events = [
        circuit("vnaccs", T0 - 100, "open"),
        circuit("vnaccs", T0 - 50, "closed"),
        circuit("ecus", T0 - 60, "open"),  # still open when the window starts
        circuit("vnaccs", T0 + 10, "open"),
        circuit("vnaccs", T0 + 20, "half_open"),
        circuit("vnaccs", T0 + 25, "closed"),
        circuit("ecus", T0 + 30, "closed"),
        circuit("vnaccs", T0 + 500, "open"),  # after the window
    ]
    await store.write(events)
    await queued(store, arrival())  # message events are not destination events
    got = await store.destination_events(T0, T0 + 100)
    assert [(e.destination, e.at, e.detail) for e in got] == [
        ("ecus", T0 - 60, "open"),
        ("vnaccs", T0 - 50, "closed"),
        ("vnaccs", T0 + 10, "open"),
        ("vnaccs", T0 + 20, "half_open"),
        ("vnaccs", T0 + 25, "closed"),
        ("ecus", T0 + 30, "closed"),
    ]
    assert got[0] == replace(events[2])
    only = await store.destination_events(T0, T0 + 100, destination="ecus")
    assert [(e.at, e.detail) for e in only] == [(T0 - 60, "open"), (T0 + 30, "closed")]
    assert await store.destination_events(T0 - 1000, T0 - 999) == []


async def test_events_of_a_window_stream_oldest_first_filtered_by_kind_and_destination(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "WINDOW_CHUNK", 3)
    store = await stores.started()
    await store.write([ev(EventKind.DUPLICATE, T0 + i, f"M-{i}") for i in range(5)])
    await store.write([ev(EventKind.DUPLICATE, T0 + 2, "SAME-TIME")])  # a tie: written order
    await store.write([ev(EventKind.CONFLICT, T0 + 3, "C-1"), ev(EventKind.ATTEMPT, T0 + 4, "M-4")])
    await store.write([Event(EventKind.CONFLICT, T0 + 1, "VN-NSW", "C-2", "ecus")])
    everything = [(e.kind, e.message_id) async for e in store.events(T0, T0 + 10)]
    assert everything == [
        (EventKind.DUPLICATE, "M-0"),
        (EventKind.DUPLICATE, "M-1"),
        (EventKind.CONFLICT, "C-2"),
        (EventKind.DUPLICATE, "M-2"),
        (EventKind.DUPLICATE, "SAME-TIME"),
        (EventKind.DUPLICATE, "M-3"),
        (EventKind.CONFLICT, "C-1"),
        (EventKind.DUPLICATE, "M-4"),
        (EventKind.ATTEMPT, "M-4"),
    ]
    resends = store.events(T0 + 1, T0 + 4, kinds=[EventKind.DUPLICATE, EventKind.CONFLICT], destination="vnaccs")
    assert [e.message_id async for e in resends] == ["M-1", "M-2", "SAME-TIME", "M-3", "C-1"]
    assert [e async for e in store.events(T0, T0 + 10, kinds=[])] == []


def test_a_batch_folds_an_attempt_into_its_delivery_and_nothing_else() -> None:
    from gateway.journal import queries

    batch = [
        ev(EventKind.ATTEMPT, T0 + 1, status=200),
        ev(EventKind.ATTEMPT, T0 + 1, status=503, message_id="M-2"),
        ev(EventKind.DELIVERED, T0 + 2, status=200),
        ev(EventKind.PARKED, T0 + 3, error="rejected", message_id="M-2"),
        ev(EventKind.DELIVERED, T0 + 4, status=200, message_id="M-2"),
    ]
    moves = [(e.message_id, e.kind, m.attempts) for e, m in queries.status_moves(batch)]
    # M-1: its attempt folds into its delivery; M-2: a park sets the reason and stays its own UPDATE
    assert moves == [
        ("M-2", EventKind.ATTEMPT, 1),
        ("M-1", EventKind.DELIVERED, 1),
        ("M-2", EventKind.PARKED, 0),
        ("M-2", EventKind.DELIVERED, 0),
    ]


@pytest.mark.parametrize("kind", [k for k in EventKind if k in STATUS_AFTER])
def test_the_cached_move_statement_and_its_arguments_match_move_sql_exactly(kind: EventKind) -> None:
    from gateway.journal import postgres, queries, sqlite
    from gateway.journal.queries import Query

    e = ev(kind, T0 + 1.25, status=200, error="rejected", detail="x")
    m = queries.status_move(e)
    assert m is not None
    for dialect in (sqlite.DIALECT, postgres.DIALECT):
        q = Query(dialect)
        text = queries.move_sql("t", q, e, m)
        assert queries.move_statement("t", dialect) == text
        assert queries.move_args(e, m, dialect) == q.args
