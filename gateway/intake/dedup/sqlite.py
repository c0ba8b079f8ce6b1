"""The SQLite store of seen ids: one local file, for a single host (see gateway/intake/dedup/policy.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.intake.dedup.store import PURGE_BATCH, Claimed, ClaimResult, InFlight, Limits, Receipt, Seen
from gateway.settings.model import Dedup
from gateway.timeutil import Clock


def _add_digest_column(db: sqlite3.Connection, table: str) -> None:
    """Migrate a table from before body digests were stored: add the column, NULL = unknown.

    Checked again under the write lock, so two processes starting at once do not both add it.
    """

    def missing() -> bool:
        return "digest" not in {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}

    if not missing():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if missing():
            db.execute(f'ALTER TABLE "{table}" ADD COLUMN digest TEXT')
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class SqliteStore:
    """Seen ids in a local SQLite file (gateway/intake/dedup/policy.py says when that is enough).

    One connection, used from worker threads under a lock: the lock is taken inside the
    thread, so a cancelled request can never leave two threads on the connection. WAL with
    synchronous=NORMAL survives a killed process; a power cut may lose the last receipts,
    which only means a re-send is queued again (backends deduplicate).
    """

    def __init__(self, settings: Dedup, *, clock: Clock = time.time) -> None:
        self.path = Path(settings.path)
        self.table = settings.table
        self.timeout_s = settings.timeout_s
        self._limits = Limits(settings, clock)
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        t = self.table
        db.execute(
            f'CREATE TABLE IF NOT EXISTS "{t}" (sender TEXT NOT NULL, message_id TEXT NOT NULL, state TEXT NOT NULL, '
            "token TEXT, at REAL NOT NULL, digest TEXT NOT NULL, destination TEXT, received_at TEXT, "
            "PRIMARY KEY (sender, message_id))"
        )
        db.execute(f'CREATE INDEX IF NOT EXISTS "{t}_at" ON "{t}" (at)')
        _add_digest_column(db, t)
        self._db = db

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            return fn()

    def _locked_batch(self, batch: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Run each call in turn (each its own transaction) in one thread hop."""
        results: list[tuple[bool, Any]] = []
        with self._lock:
            for fn in batch:
                try:
                    results.append((True, fn()))
                except Exception as exc:  # handed to that call's own caller, never swallowed
                    results.append((False, exc))
        return results

    async def _run(self, fn: Callable[[], Any]) -> Any:
        """Queue `fn` for the next batch and wait for its own result.

        Under load many requests want the store at once; one thread hop per request (two
        per message) cost more CPU than the SQL itself (bench/results/ANALYSIS.md). Calls
        that arrive while a batch runs go together in the next one.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="dedup-sqlite-batch")
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

    async def claim(self, sender: str, message_id: str, digest: str) -> ClaimResult:
        now, expired, stale = self._limits.cutoffs()
        token = uuid.uuid4().hex

        def q() -> ClaimResult:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")  # takes the write lock first: no other process can interleave
            try:
                row = db.execute(
                    f'SELECT state, at, digest, destination, received_at FROM "{self.table}" '
                    "WHERE sender = ? AND message_id = ?",
                    (sender, message_id),
                ).fetchone()
                result: ClaimResult
                if row is not None and row[0] == "queued" and row[1] >= expired:
                    result = Seen(Receipt(message_id, row[3], row[4], duplicate=True), row[2])
                elif row is not None and row[0] == "pending" and row[1] >= stale:
                    result = InFlight()
                else:
                    db.execute(
                        f'INSERT OR REPLACE INTO "{self.table}" (sender, message_id, state, token, at, digest) '
                        "VALUES (?, ?, 'pending', ?, ?, ?)",
                        (sender, message_id, token, now, digest),
                    )
                    result = Claimed(sender, message_id, token)
                db.execute("COMMIT")
                return result
            except BaseException:
                db.execute("ROLLBACK")
                raise

        result: ClaimResult = await self._run(q)
        return result

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        now = self._limits.clock()

        def q() -> bool:
            cur = self._conn().execute(
                f"UPDATE \"{self.table}\" SET state = 'queued', token = NULL, at = ?, destination = ?, received_at = ? "
                "WHERE sender = ? AND message_id = ? AND token = ?",
                (now, receipt.destination, receipt.received_at, claim.sender, claim.message_id, claim.token),
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

    async def purge(self) -> int:
        _, expired, stale = self._limits.cutoffs()

        def q() -> int:
            total = 0
            while True:  # batches keep each write lock short
                cur = self._conn().execute(
                    f'DELETE FROM "{self.table}" WHERE rowid IN (SELECT rowid FROM "{self.table}" '
                    "WHERE (state = 'queued' AND at < ?) OR (state = 'pending' AND at < ?) LIMIT ?)",
                    (expired, stale, PURGE_BATCH),
                )
                total += cur.rowcount
                if cur.rowcount < PURGE_BATCH:
                    return total

        deleted: int = await self._run(q)
        return deleted
