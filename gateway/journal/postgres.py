"""The PostgreSQL journal store, shared by every replica (gateway/intake/dedup/policy.py says when).

asyncpg is imported when a PostgresStore is made, not with this module: a gateway on SQLite
(or a process that never journals) never loads the driver. Schema, partitions and the
migration of an earlier version's table: postgres_schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.errors import StoreError
from gateway.journal import postgres_schema as schema
from gateway.journal import queries
from gateway.journal.model import Event
from gateway.journal.queries import Dialect
from gateway.journal.reading import StoreReading
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

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("swgw.journal")


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _unix(ts: datetime) -> float:
    return ts.timestamp()


DIALECT = Dialect(numbered=True, time_in=_ts, time_out=_unix)
MAINTENANCE_TIMEOUT_S = 300.0
"""Bound on schema changes and partition drops (a concurrent detach waits for older transactions)."""
MONTHS_AHEAD = 2
"""Event partitions made ahead of the current month, so no insert waits for a CREATE."""


class PostgresStore(StoreReading):
    """Seen ids and the journal in PostgreSQL, shared by every replica.

    The pool opens connections on demand (`min_size=0`), so a gateway started while
    PostgreSQL is down comes up, answers per `on_store_error`, and recovers by itself. Every
    call is bounded by `timeout_s` (connect, acquire and statement), so a hung database
    becomes a 503, never a hung partner request; schema work and partition drops have
    MAINTENANCE_TIMEOUT_S. `purge_batch` records go per DELETE.
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
        import asyncpg

        # What a failed call raises: the driver's and the network's errors, and a timeout.
        self._errors: tuple[type[Exception], ...] = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            OSError,
            TimeoutError,
        )
        self._no_partition = asyncpg.CheckViolationError
        self.dsn = settings.dsn.reveal() if settings.dsn is not None else ""
        self.table = settings.table
        self.events_table = f"{settings.table}_events"
        self.timeout_s = settings.timeout_s
        self.pool_size = settings.pool_size
        self.purge_batch = purge_batch
        self._limits = Limits(settings, journal, clock)
        self._pool: asyncpg.Pool | None = None
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._months: set[datetime] = set()  # event partitions known to exist

    async def start(self) -> None:
        import asyncpg

        self._pool = asyncpg.create_pool(
            self.dsn,
            min_size=0,
            max_size=self.pool_size,
            timeout=self.timeout_s,
            command_timeout=self.timeout_s,
        )
        await self._pool  # with min_size=0 this connects nothing yet
        with contextlib.suppress(StoreError):  # down at start-up is fine: retried per request
            await self._ensure_schema()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*self._errors):
                await asyncio.wait_for(pool.close(), timeout=self.timeout_s)

    async def _call(
        self, fn: Callable[[PoolConnectionProxy], Awaitable[Any]], *, timeout_s: float | None = None
    ) -> Any:
        if self._pool is None:
            raise StoreError("postgres store is not started")
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s * 2), self._pool.acquire() as conn:
                return await fn(conn)
        except self._errors as exc:
            raise StoreError(f"postgres: {exc or type(exc).__name__}") from exc

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return

            async def make(conn: PoolConnectionProxy) -> None:
                if not await schema.schema_ready(conn, self.table, self.events_table):
                    await schema.create_schema(conn, self.table, self.events_table)

            await self._call(make, timeout_s=MAINTENANCE_TIMEOUT_S)
            self._schema_ready = True
            now = schema.month_of(self._limits.clock())
            await self._ensure_months([schema.add_months(now, n) for n in range(MONTHS_AHEAD + 1)])

    async def _ensure_months(self, months: Sequence[datetime]) -> None:
        for month in sorted(set(months) - self._months):
            await self._ensure_month(month)
            self._months.add(month)

    async def _ensure_month(self, month: datetime) -> None:
        await self._call(
            lambda c: schema.ensure_partition(c, self.table, self.events_table, month), timeout_s=MAINTENANCE_TIMEOUT_S
        )

    async def _with_partitions(
        self, times: Sequence[float], fn: Callable[[PoolConnectionProxy], Awaitable[Any]]
    ) -> Any:
        """`fn` once the partitions for `times` exist; again once if one was dropped under us."""
        await self._ensure_schema()
        months = [schema.month_of(t) for t in times]
        await self._ensure_months(months)
        try:
            return await self._call(fn)
        except StoreError as exc:
            if not isinstance(exc.__cause__, self._no_partition):
                raise
            self._months.clear()  # another replica's purge, or a clock far off: check again
            await self._ensure_months(months)
            return await self._call(fn)

    # -- intake: claim, confirm, release ------------------------------------------------------

    async def claim(self, arrival: Arrival) -> ClaimResult:
        await self._ensure_schema()
        now, expired, stale = self._limits.cutoffs()
        token = uuid.uuid4().hex
        a, t = arrival, self.table
        # Takes a free id, an expired entry or a stale claim, with the record's columns, in one
        # statement; a live row makes it return nothing, and we read that row to say why. A row
        # deleted between the two statements (its claim was released) means: try again.
        upsert = (
            f'INSERT INTO "{t}" AS d (sender, message_id, state, token, at, digest, destination, received_at, '
            "message_type, receiver, size, received, status, attempts, delivered_at, parked_reason, updated_at) "
            "VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, 'received', 0, NULL, NULL, $4) "
            "ON CONFLICT (sender, message_id) DO UPDATE SET state = 'pending', token = EXCLUDED.token, "
            "at = EXCLUDED.at, digest = EXCLUDED.digest, destination = EXCLUDED.destination, "
            "received_at = EXCLUDED.received_at, message_type = EXCLUDED.message_type, "
            "receiver = EXCLUDED.receiver, size = EXCLUDED.size, received = EXCLUDED.received, "
            "status = 'received', attempts = 0, delivered_at = NULL, parked_reason = NULL, "
            "updated_at = EXCLUDED.updated_at "
            "WHERE (d.state = 'queued' AND d.at < $12) OR (d.state = 'pending' AND d.at < $13) "
            "RETURNING d.token"
        )
        args: tuple[Any, ...] = (a.sender, a.message_id, token, _ts(now), a.sha256, a.destination, a.received_at)
        args += (a.message_type, a.receiver, a.size, _ts(a.received), _ts(expired), _ts(stale))
        select = f'SELECT state, digest, destination, received_at FROM "{t}" WHERE sender = $1 AND message_id = $2'
        for _ in range(5):
            won = await self._call(lambda c: c.fetchval(upsert, *args))
            if won == token:
                return Claimed(a.sender, a.message_id, token, now)
            row = await self._call(lambda c: c.fetchrow(select, a.sender, a.message_id))
            if row is None:
                continue
            if row["state"] == "queued":
                return Seen(
                    Receipt(a.message_id, row["destination"], row["received_at"], duplicate=True), row["digest"]
                )
            return InFlight()
        return InFlight()  # the id keeps changing hands: let the partner come back in a second

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        now = self._limits.clock()
        queued_at = min(claim.at, now) if claim.at else now  # before any attempt (Claimed says why)
        update = (
            f"UPDATE \"{self.table}\" SET state = 'queued', token = NULL, at = $1, destination = $2, "
            "received_at = $3, status = CASE WHEN status = 'received' THEN 'queued' ELSE status END, "
            "updated_at = $7 WHERE sender = $4 AND message_id = $5 AND token = $6"
        )
        args: tuple[Any, ...] = (_ts(queued_at), receipt.destination, receipt.received_at)
        args += (claim.sender, claim.message_id, claim.token, _ts(now))
        if not self._limits.journal:
            status = await self._with_partitions([], lambda c: c.execute(update, *args))
            return bool(status == "UPDATE 1")
        # One statement, so one round trip as before the journal: the row becomes queued and its
        # `queued` event is appended atomically. Delivery may have moved the status on already
        # (it can consume before this runs): that status stays.
        statement = (
            f"WITH u AS ({update} RETURNING sender, message_id, destination), "
            f'e AS (INSERT INTO "{self.events_table}" (sender, message_id, at, kind, destination) '
            "SELECT sender, message_id, $1, 'queued', destination FROM u) "
            "SELECT count(*) FROM u"
        )
        done = await self._with_partitions([queued_at], lambda c: c.fetchval(statement, *args))
        return bool(done == 1)

    async def release(self, claim: Claimed) -> None:
        await self._ensure_schema()
        await self._call(
            lambda c: c.execute(
                f'DELETE FROM "{self.table}" WHERE sender = $1 AND message_id = $2 AND token = $3 '
                "AND state = 'pending'",
                claim.sender,
                claim.message_id,
                claim.token,
            )
        )

    # -- the writer: one transaction per batch -------------------------------------------------

    async def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [queries.event_row(e, DIALECT) for e in events]
        insert = (
            f'INSERT INTO "{self.events_table}" ({queries.EVENT_INSERT}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)'
        )
        update = ""
        moves: list[list[Any]] = []
        for e, m in queries.status_moves(events):
            update = queries.move_statement(self.table, DIALECT)  # the same text for every event
            moves.append(queries.move_args(e, m, DIALECT))

        async def body(conn: PoolConnectionProxy) -> None:
            async with conn.transaction():
                await conn.executemany(insert, rows)
                if moves:
                    await conn.executemany(update, moves)

        await self._with_partitions([e.at for e in events], body)

    # -- retention -------------------------------------------------------------------------------

    async def purge(self) -> int:
        """Stale claims and records past retention in batches; event partitions wholly past
        retention are dropped (so events are kept up to a month longer than retention_days).

        One replica purges at a time (a session advisory lock); the others skip.
        """
        await self._ensure_schema()
        _, _, stale = self._limits.cutoffs()
        kept = self._limits.kept_since()
        now = schema.month_of(self._limits.clock())
        await self._ensure_months([schema.add_months(now, n) for n in range(MONTHS_AHEAD + 1)])
        t = self.table
        total = 0
        while True:  # batches keep each transaction short on a big table
            status = await self._call(
                lambda c: c.execute(
                    f'DELETE FROM "{t}" WHERE ctid = ANY(ARRAY(SELECT ctid FROM "{t}" '
                    "WHERE (state = 'queued' AND at < $1) OR (state = 'pending' AND at < $2) LIMIT $3))",
                    _ts(kept),
                    _ts(stale),
                    self.purge_batch,
                )
            )
            deleted = int(status.rsplit(" ", 1)[-1])
            total += deleted
            if deleted < self.purge_batch:
                break
        await self._call(lambda c: self._drop_partitions(c, kept), timeout_s=MAINTENANCE_TIMEOUT_S * 2)
        return total

    async def _drop_partitions(self, conn: PoolConnectionProxy, kept: float) -> None:
        key = f"swgw-journal-purge:{self.table}"
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            return  # another replica is purging
        try:
            for name, month, pending in await schema.partitions(conn, self.events_table):
                if schema.add_months(month, 1).timestamp() > kept:
                    break  # oldest first: every later partition holds events still kept
                await schema.drop_partition(
                    conn, self.events_table, name, pending=pending, timeout_s=MAINTENANCE_TIMEOUT_S
                )
                self._months.discard(month)
                log.info(
                    "dropped journal partition %s (events of %s, past retention)",
                    name,
                    f"{month:%Y-%m}",
                    extra={"event": "journal_partition_dropped", "partition": name},
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    # -- reading -----------------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        await self._ensure_schema()
        rows: list[Any] = await self._call(lambda c: c.fetch(sql, *args))
        return rows
