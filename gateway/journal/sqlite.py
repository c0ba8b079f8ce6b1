"""The SQLite journal store: one local file for a single host (gateway/intake/dedup/policy.py says when).

The same file holds intake's seen ids and the journal: the `<table>` rows are both the
dedup claims and the message records, `<table>_events` their events (and the destinations'
circuit events). Schema and migration from a table of an earlier version: sqlite_schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.journal import queries
from gateway.journal.model import Event
from gateway.journal.queries import Dialect
from gateway.journal.reading import StoreReading
from gateway.journal.sqlite_schema import create_schema
from gateway.journal.store import (
    JOURNAL_ON,
    PURGE_BATCH,
    Arrival,
    Claimed,
    ClaimResult,
    InFlight,
    Limits,
    Receipt,
    Seen,
)
from gateway.settings.model import Dedup, JournalSettings
from gateway.timeutil import Clock

DIALECT = Dialect(numbered=False, time_in=float, time_out=float)


class SqliteStore(StoreReading):
    """Seen ids and the journal in a local SQLite file.

    One connection, used from worker threads under a lock: the lock is taken inside the
    thread, so a cancelled request can never leave two threads on the connection. Calls
    that arrive while a batch runs go together in the next thread hop (`_run`) and share
    one transaction (group commit), each inside a savepoint of its own, so one call's error
    undoes only that call. Running the batches on the event loop instead (no thread hop)
    measured worse with two gateway processes on one file: a write waiting for the other
    process's lock then stalls every request of its process (issue 17, bench/results/
    ANALYSIS.md). WAL with synchronous=NORMAL survives a killed process; a power cut
    may lose the last commits (docs/operations.md: what can be missing after which crash).
    `purge_batch` rows go per purge transaction, so a purge never holds the file for long.
    """

    dialect = DIALECT

    def __init__(
        self,
        settings: Dedup,
        *,
        journal: JournalSettings = JOURNAL_ON,
        clock: Clock = time.time,
        purge_batch: int = PURGE_BATCH,
    ) -> None:
        self.path = Path(settings.path)
        self.table = settings.table
        self.events_table = f"{settings.table}_events"
        self.timeout_s = settings.timeout_s
        self.purge_batch = purge_batch
        self._limits = Limits(settings, journal, clock)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(self._locked, db.close)

    def _open(self) -> None:
        """Connect and create the schema, retried within `timeout_s` while another process holds the file.

        Two processes opening one new file at once (`swgw serve --workers 2`): SQLite answers
        "database is locked" at once, without waiting for its busy timeout, to one of them in
        some cases (switching the file to WAL, a lock upgrade it refuses to wait for, to avoid
        a deadlock). Every statement here is idempotent, so the open is simply tried again.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                create_schema(db, self.table, self.events_table, journal=self._limits.journal)
            except sqlite3.OperationalError as exc:
                db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # in the store's worker thread, never on the event loop
                continue
            self._db = db
            return

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            return fn()

    def _locked_batch(self, batch: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Run each call in turn in one thread hop, all of them in one transaction (group commit).

        Two statements per message (claim, confirm) each committed alone cost a WAL append
        of every page they touched, per statement; one COMMIT per batch writes each page once
        (bench/results/ANALYSIS.md, issue 17). Each call runs in a savepoint: a call that
        raises is rolled back alone and its caller gets the error, unless the failure ended
        the whole transaction (SQLite rolls back on some errors): then the calls before it
        were undone too and their callers get that error, never a success that was not
        written (a confirm's 202 or a delivery's ack relies on it). If the COMMIT fails,
        nothing of the batch was written and every caller gets that error.
        """
        results: list[tuple[bool, Any]] = []
        with self._lock:
            db = self._db
            grouped = db is not None and len(batch) > 1 and self._begin(db)
            for fn in batch:
                if grouped:
                    assert db is not None
                    db.execute("SAVEPOINT call")
                try:
                    value = fn()
                except Exception as exc:  # handed to that call's own caller, never swallowed
                    if grouped:
                        assert db is not None
                        grouped = self._undo_call(db)
                        if not grouped:  # the batch's transaction went with it: so did the earlier calls
                            results = [(False, exc)] * len(results)
                    results.append((False, exc))
                    continue
                if grouped:
                    assert db is not None
                    db.execute("RELEASE call")
                results.append((True, value))
            if grouped:
                assert db is not None
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    results = [(False, exc)] * len(batch)
        return results

    @staticmethod
    def _begin(db: sqlite3.Connection) -> bool:
        """Take the write lock for a batch; False (each call then commits alone) if it cannot."""
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return False
        return True

    @staticmethod
    def _undo_call(db: sqlite3.Connection) -> bool:
        """Roll back the failed call's savepoint; False if the batch's transaction is gone with it."""
        try:
            db.execute("ROLLBACK TO call")
            db.execute("RELEASE call")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            return False
        return db.in_transaction

    async def _run(self, fn: Callable[[], Any]) -> Any:
        """Queue `fn` for the next batch and wait for its own result.

        Under load many requests want the store at once; one thread hop per request (two
        per message) cost more CPU than the SQL itself (bench/results/ANALYSIS.md). Calls
        that arrive while a batch runs go together in the next one.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="journal-sqlite-batch")
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._locked_batch, [fn for fn, _ in batch])
            except BaseException as exc:  # the thread could not run at all: fail every waiter
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else sqlite3.OperationalError(str(exc)))
                raise
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():  # its request was cancelled; the call itself ran, as before
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("store is not open")
        return self._db

    def _transaction(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """`body` in one write transaction, taking the write lock first (no other process interleaves)."""
        db = self._conn()
        if db.in_transaction:
            return body(db)
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db)
            db.execute("COMMIT")
            return result
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- intake: claim, confirm, release ------------------------------------------------------

    async def claim(self, arrival: Arrival) -> ClaimResult:
        now, expired, stale = self._limits.cutoffs()
        token = uuid.uuid4().hex
        a = arrival
        record = (a.message_type, a.receiver, a.size, a.received, now)

        def q(db: sqlite3.Connection) -> ClaimResult:
            row = db.execute(
                f'SELECT state, at, digest, destination, received_at FROM "{self.table}" '
                "WHERE sender = ? AND message_id = ?",
                (a.sender, a.message_id),
            ).fetchone()
            if row is not None and row[0] == "queued" and row[1] >= expired:
                return Seen(Receipt(a.message_id, row[3], row[4], duplicate=True), row[2])
            if row is not None and row[0] == "pending" and row[1] >= stale:
                return InFlight()
            # The claim and the record are one row, written in one statement. A row out of the
            # window or a stale claim is replaced: a new message under an old id (its events stay).
            db.execute(
                f'INSERT OR REPLACE INTO "{self.table}" (sender, message_id, state, token, at, digest, '
                "destination, received_at, message_type, receiver, size, received, status, attempts, "
                "delivered_at, parked_reason, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', 0, NULL, NULL, ?)",
                (*(a.sender, a.message_id, token, now, a.sha256, a.destination, a.received_at), *record),
            )
            return Claimed(a.sender, a.message_id, token, now)

        result: ClaimResult = await self._run(lambda: self._transaction(q))
        return result

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        now = self._limits.clock()
        queued_at = min(claim.at, now) if claim.at else now  # before any attempt (Claimed says why)

        def q() -> bool:
            # One statement: with the journal on, a trigger appends the `queued` event in it
            # (sqlite_schema.queued_event, stamped with `at`). Delivery may have moved the status
            # on already (it can consume before this runs): that status stays.
            cur = self._conn().execute(
                f"UPDATE \"{self.table}\" SET state = 'queued', token = NULL, at = ?, destination = ?, "
                "received_at = ?, status = CASE WHEN status = 'received' THEN 'queued' ELSE status END, "
                "updated_at = ? WHERE sender = ? AND message_id = ? AND token = ?",
                (queued_at, receipt.destination, receipt.received_at, now, claim.sender, claim.message_id, claim.token),
            )
            return cur.rowcount == 1

        done: bool = await self._run(q)
        return done

    async def release(self, claim: Claimed) -> None:
        await self._run(
            lambda: self._conn().execute(
                f"DELETE FROM \"{self.table}\" WHERE sender = ? AND message_id = ? AND token = ? AND state = 'pending'",
                (claim.sender, claim.message_id, claim.token),
            )
        )

    # -- the writer: one transaction per batch -------------------------------------------------

    async def write(self, events: Sequence[Event]) -> None:
        rows = [queries.event_row(e, DIALECT) for e in events]
        update = ""
        moves: list[list[Any]] = []
        for e, m in queries.status_moves(events):
            update = queries.move_statement(self.table, DIALECT)  # the same text for every event
            moves.append(queries.move_args(e, m, DIALECT))

        def body(db: sqlite3.Connection) -> None:
            db.executemany(
                f'INSERT INTO "{self.events_table}" ({queries.EVENT_INSERT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', rows
            )
            if moves:
                db.executemany(update, moves)

        await self._run(lambda: self._transaction(body))

    # -- retention -------------------------------------------------------------------------------

    async def purge(self) -> int:
        """Stale claims and records past retention, then events past retention, in short batches.

        Each batch is its own transaction and its own trip through `_run`, so claims and
        journal writes queued meanwhile run between two batches: a purge never blocks intake.
        """
        _, _, stale = self._limits.cutoffs()
        kept = self._limits.kept_since()
        t, n = self.table, self.purge_batch
        records = (
            f'DELETE FROM "{t}" WHERE rowid IN (SELECT rowid FROM "{t}" '
            "WHERE (state = 'queued' AND at < ?) OR (state = 'pending' AND at < ?) LIMIT ?)",
            (kept, stale, n),
        )
        e = self.events_table
        events = (f'DELETE FROM "{e}" WHERE id IN (SELECT id FROM "{e}" WHERE at < ? LIMIT ?)', (kept, n))
        total = 0
        for sql, args in (records, events):
            while True:
                deleted = await self._delete(sql, args)
                total += deleted
                if deleted < n:
                    break
        return total

    async def _delete(self, sql: str, args: Sequence[Any]) -> int:
        deleted: int = await self._run(lambda: self._conn().execute(sql, args).rowcount)
        return deleted

    # -- reading -----------------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        rows: list[Any] = await self._run(lambda: self._conn().execute(sql, args).fetchall())
        return rows
