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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from gateway.errors import StoreError
from gateway.journal import postgres_schema as schema
from gateway.journal import queries
from gateway.journal.model import Event
from gateway.journal.postgres_batch import AGAIN, Again, Batcher, claim_sql, confirm_sql
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
from gateway.observability.metrics import Metrics
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


CLAIM_TRIES = 5
"""Statements a claim may take while its row keeps changing under it (then: InFlight)."""


@dataclass
class _Claim:
    arrival: Arrival
    token: str
    tries: int = 1


@dataclass(frozen=True)
class _Confirm:
    claim: Claimed
    receipt: Receipt
    queued_at: float
    now: float


def _claim_key(call: _Claim) -> tuple[str, str]:
    return (call.arrival.sender, call.arrival.message_id)


def _confirm_key(call: _Confirm) -> tuple[str, str]:
    return (call.claim.sender, call.claim.message_id)


class PostgresStore(StoreReading):
    """Seen ids and the journal in PostgreSQL, shared by every replica.

    The pool opens connections on demand (`min_size=0`), so a gateway started while
    PostgreSQL is down comes up, answers per `on_store_error`, and recovers by itself. Every
    call is bounded by `timeout_s` (connect, acquire and statement), so a hung database
    becomes a 503, never a hung partner request; schema work and partition drops have
    MAINTENANCE_TIMEOUT_S. `purge_batch` records go per DELETE. Claims and confirms are
    grouped across concurrent requests (postgres_batch.py), by two supervised tasks counted in
    `restarts` (`swgw_background_task_restarts_total`; a counter of its own when None).
    """

    dialect = DIALECT

    def __init__(
        self,
        settings: Dedup,
        *,
        journal: JournalSettings = JOURNAL_ON,
        clock: Clock = time.time,
        purge_batch: int = PURGE_BATCH,
        restarts: Counter | None = None,
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
        self._data_error, self._server_error = asyncpg.DataError, asyncpg.PostgresError
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
        self._claim_sql = claim_sql(self.table)
        self._confirm_sql = confirm_sql(self.table, self.events_table, journal=self._limits.journal)
        restarts = restarts if restarts is not None else Metrics(CollectorRegistry()).task_restarts
        self._claims: Batcher[_Claim, ClaimResult] = Batcher(
            "journal-postgres-claims", self._claim_batch, _claim_key, restarts, isolate=self._refused
        )
        self._confirms: Batcher[_Confirm, bool] = Batcher(
            "journal-postgres-confirms", self._confirm_batch, _confirm_key, restarts, isolate=self._refused
        )

    def _refused(self, exc: StoreError) -> bool:
        """The database (or the driver, encoding it) refused a value of the statement, not the
        connection: a data exception or an integrity violation (SQLSTATE classes 22, 23)."""
        cause = exc.__cause__
        if isinstance(cause, self._data_error):
            return True
        return isinstance(cause, self._server_error) and str(getattr(cause, "sqlstate", "")).startswith(("22", "23"))

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
        self._claims.start()
        self._confirms.start()
        with contextlib.suppress(StoreError):  # down at start-up is fine: retried per request
            await self._ensure_schema()

    async def close(self) -> None:
        await self._claims.close()  # what is queued is sent first (bounded), while the pool is open
        await self._confirms.close()
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
    # Claims and confirms go in batches, one statement each (postgres_batch.py says what stays exact).

    async def claim(self, arrival: Arrival) -> ClaimResult:
        result: ClaimResult = await self._claims.submit(_Claim(arrival, uuid.uuid4().hex))
        return result

    async def _claim_batch(self, calls: Sequence[_Claim]) -> list[ClaimResult | Again]:
        """Takes each free id, expired entry or stale claim, with the record's columns, in one
        statement; a live row is left as it is, and its state as the statement found it says
        why. A row that changed under the statement (released, or taken by another replica
        after it began) sends that claim again in the next batch, with a fresh snapshot."""
        await self._ensure_schema()
        now, expired, stale = self._limits.cutoffs()
        at, expired_at, stale_at = _ts(now), _ts(expired), _ts(stale)
        columns: list[list[Any]] = [[] for _ in range(10)]
        for call in calls:
            a = call.arrival
            values = (a.sender, a.message_id, call.token, a.sha256, a.destination, a.received_at, a.message_type)
            for column, value in zip(columns, (*values, a.receiver, a.size, _ts(a.received)), strict=True):
                column.append(value)
        rows = await self._call(lambda c: c.fetch(self._claim_sql, *columns, at, expired_at, stale_at))
        found = {(r["sender"], r["message_id"]): r for r in rows}
        results: list[ClaimResult | Again] = []
        for call in calls:
            a, row = call.arrival, found[(call.arrival.sender, call.arrival.message_id)]
            if row["won"]:
                results.append(Claimed(a.sender, a.message_id, call.token, now))
            elif row["state"] == "queued" and row["at"] >= expired_at:
                receipt = Receipt(a.message_id, row["destination"], row["received_at"], duplicate=True)
                results.append(Seen(receipt, row["digest"]))
            elif row["state"] == "pending" and row["at"] >= stale_at:
                results.append(InFlight())
            elif call.tries < CLAIM_TRIES:
                call.tries += 1
                results.append(AGAIN)
            else:
                results.append(InFlight())  # the id keeps changing hands: let the partner come back in a second
        return results

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        now = self._limits.clock()
        queued_at = min(claim.at, now) if claim.at else now  # before any attempt (Claimed says why)
        done: bool = await self._confirms.submit(_Confirm(claim, receipt, queued_at, now))
        return done

    async def _confirm_batch(self, calls: Sequence[_Confirm]) -> list[bool | Again]:
        """The rows become queued, each with its `queued` event (journal on), in one statement."""
        columns: list[list[Any]] = [[] for _ in range(7)]
        for call in calls:
            c, r = call.claim, call.receipt
            values = (c.sender, c.message_id, c.token, _ts(call.queued_at), r.destination, r.received_at, _ts(call.now))
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        times = [call.queued_at for call in calls] if self._limits.journal else []
        rows = await self._with_partitions(times, lambda c: c.fetch(self._confirm_sql, *columns))
        done = {(r["sender"], r["message_id"]) for r in rows}
        return [(call.claim.sender, call.claim.message_id) in done for call in calls]

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
