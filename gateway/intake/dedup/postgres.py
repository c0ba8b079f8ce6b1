"""The PostgreSQL store of seen ids, shared by every replica (see gateway/intake/dedup/policy.py).

asyncpg is imported when a PostgresStore is made, not with this module: policy.py imports
both stores, and a gateway on SQLite (or a delivery-only process) never loads the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.errors import StoreError
from gateway.intake.dedup.store import PURGE_BATCH, Claimed, ClaimResult, InFlight, Limits, Receipt, Seen
from gateway.settings.model import Dedup
from gateway.timeutil import Clock

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class PostgresStore:
    """Seen ids in a PostgreSQL table shared by every replica.

    The pool opens connections on demand (`min_size=0`), so a gateway started while
    PostgreSQL is down comes up, answers per `on_store_error`, and recovers by itself. Every
    call is bounded by `timeout_s` (connect, acquire and statement), so a hung database
    becomes a 503, never a hung partner request.
    """

    def __init__(self, settings: Dedup, *, clock: Clock = time.time) -> None:
        import asyncpg

        # What a failed call raises: the driver's and the network's errors, and a timeout.
        self._errors: tuple[type[Exception], ...] = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            OSError,
            TimeoutError,
        )
        self.dsn = settings.dsn.reveal() if settings.dsn is not None else ""
        self.table = settings.table
        self.timeout_s = settings.timeout_s
        self.pool_size = settings.pool_size
        self._limits = Limits(settings, clock)
        self._pool: asyncpg.Pool | None = None
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

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

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            t = self.table
            ddl = (
                f'CREATE TABLE IF NOT EXISTS "{t}" (sender text NOT NULL, message_id text NOT NULL, '
                "state text NOT NULL, token text, at timestamptz NOT NULL, digest text NOT NULL, "
                "destination text, received_at text, PRIMARY KEY (sender, message_id)); "
                f'CREATE INDEX IF NOT EXISTS "{t}_at" ON "{t}" (at)'
            )
            try:
                await self._execute(ddl)
            except StoreError as exc:
                import asyncpg

                # Two replicas creating the table at once: the loser sees a unique violation
                # on the catalog, and the table exists; anything else is a real failure.
                if not isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                    raise
            await self._add_digest_column()
            self._schema_ready = True

    async def _add_digest_column(self) -> None:
        """Migrate a table from before body digests were stored: add the column, NULL = unknown.

        Looked up first, so a current table costs no ALTER (and no exclusive lock) at start-up.
        """
        present = await self._call(
            lambda c: c.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1::text) "
                "AND attname = 'digest' AND NOT attisdropped)",
                f'"{self.table}"',
            )
        )
        if present:
            return
        try:
            await self._execute(f'ALTER TABLE "{self.table}" ADD COLUMN IF NOT EXISTS digest text')
        except StoreError as exc:
            import asyncpg

            # Two replicas migrating at once: the loser may trip over the winner's column.
            if not isinstance(exc.__cause__, asyncpg.DuplicateColumnError | asyncpg.UniqueViolationError):
                raise

    async def _execute(self, query: str, *args: Any) -> str:
        result: str = await self._call(lambda c: c.execute(query, *args))
        return result

    async def _call(self, fn: Callable[[PoolConnectionProxy], Awaitable[Any]]) -> Any:
        if self._pool is None:
            raise StoreError("postgres store is not started")
        try:
            async with asyncio.timeout(self.timeout_s * 2), self._pool.acquire() as conn:
                return await fn(conn)
        except self._errors as exc:
            raise StoreError(f"postgres: {exc or type(exc).__name__}") from exc

    async def claim(self, sender: str, message_id: str, digest: str) -> ClaimResult:
        await self._ensure_schema()
        now, expired, stale = self._limits.cutoffs()
        token = uuid.uuid4().hex
        t = self.table
        # Takes a free id, an expired entry or a stale claim in one statement; a live row
        # makes it return nothing, and we read that row to say why. A row deleted between
        # the two statements (its claim was released) means: try again.
        upsert = (
            f'INSERT INTO "{t}" AS d (sender, message_id, state, token, at, digest) '
            "VALUES ($1, $2, 'pending', $3, $4, $5) "
            "ON CONFLICT (sender, message_id) DO UPDATE SET state = 'pending', token = EXCLUDED.token, "
            "at = EXCLUDED.at, digest = EXCLUDED.digest, destination = NULL, received_at = NULL "
            "WHERE (d.state = 'queued' AND d.at < $6) OR (d.state = 'pending' AND d.at < $7) "
            "RETURNING d.token"
        )
        select = f'SELECT state, digest, destination, received_at FROM "{t}" WHERE sender = $1 AND message_id = $2'
        for _ in range(5):
            won = await self._call(
                lambda c: c.fetchval(upsert, sender, message_id, token, _ts(now), digest, _ts(expired), _ts(stale))
            )
            if won == token:
                return Claimed(sender, message_id, token)
            row = await self._call(lambda c: c.fetchrow(select, sender, message_id))
            if row is None:
                continue
            if row["state"] == "queued":
                return Seen(Receipt(message_id, row["destination"], row["received_at"], duplicate=True), row["digest"])
            return InFlight()
        return InFlight()  # the id keeps changing hands: let the partner come back in a second

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        await self._ensure_schema()
        status = await self._execute(
            f"UPDATE \"{self.table}\" SET state = 'queued', token = NULL, at = $1, destination = $2, "
            "received_at = $3 WHERE sender = $4 AND message_id = $5 AND token = $6",
            _ts(self._limits.clock()),
            receipt.destination,
            receipt.received_at,
            claim.sender,
            claim.message_id,
            claim.token,
        )
        return status == "UPDATE 1"

    async def release(self, claim: Claimed) -> None:
        await self._ensure_schema()
        await self._execute(
            f"DELETE FROM \"{self.table}\" WHERE sender = $1 AND message_id = $2 AND token = $3 AND state = 'pending'",
            claim.sender,
            claim.message_id,
            claim.token,
        )

    async def purge(self) -> int:
        await self._ensure_schema()
        _, expired, stale = self._limits.cutoffs()
        t = self.table
        total = 0
        while True:  # batches keep each transaction short on a big table
            status = await self._execute(
                f'DELETE FROM "{t}" WHERE ctid = ANY(ARRAY(SELECT ctid FROM "{t}" '
                "WHERE (state = 'queued' AND at < $1) OR (state = 'pending' AND at < $2) LIMIT $3))",
                _ts(expired),
                _ts(stale),
                PURGE_BATCH,
            )
            deleted = int(status.rsplit(" ", 1)[-1])
            total += deleted
            if deleted < PURGE_BATCH:
                return total
