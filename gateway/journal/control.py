"""Operators' decisions every replica must follow, kept where all of them look: which destinations are paused.

One row per destination in `<dedup table>_control` (destination, paused, by, at), in the
same database as the journal (`[dedup] backend`): PostgreSQL for replicas on several hosts,
SQLite for several processes on one host. A pause written here outlives the replica that
took it and reaches every other one (gateway/operations/pauses.py polls it); with
`backend = "none"` there is no shared store and a pause stays in the process that took it.

The store has its own small connection (PostgreSQL: a pool of at most 2; SQLite: a
connection per call in a worker thread), so a slow journal batch never delays a pause, and
the journal's stores stay as they are.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import StoreError
from gateway.settings.model import Dedup


@dataclass(frozen=True)
class PauseState:
    """A destination's pause as last written: by whom (replica and action) and when (unix time)."""

    destination: str
    paused: bool
    by: str
    at: float


class ControlStore(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def states(self) -> dict[str, PauseState]: ...
    async def write(self, state: PauseState) -> None: ...


def control_store(dedup: Dedup) -> ControlStore | None:
    """The store for `[dedup] backend` (None for "none"); not started."""
    if dedup.backend == "postgres":
        return PostgresControl(dedup)
    if dedup.backend == "sqlite":
        return SqliteControl(dedup)
    return None


class SqliteControl:
    def __init__(self, dedup: Dedup) -> None:
        self.path, self.table, self.timeout_s = Path(dedup.path), f"{dedup.table}_control", dedup.timeout_s

    def _call(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        db = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            with db:
                db.execute(
                    f'CREATE TABLE IF NOT EXISTS "{self.table}" '
                    "(destination TEXT PRIMARY KEY, paused INTEGER NOT NULL, by TEXT NOT NULL, at REAL NOT NULL)"
                )
                return db.execute(sql, args).fetchall()
        finally:
            db.close()

    async def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return await asyncio.to_thread(self._call, sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"control table {self.table}: {exc}") from exc

    async def start(self) -> None:
        await self._run("SELECT 1")

    async def close(self) -> None:
        return None

    async def states(self) -> dict[str, PauseState]:
        rows = await self._run(f'SELECT destination, paused, by, at FROM "{self.table}"')
        return {r[0]: PauseState(r[0], bool(r[1]), r[2], r[3]) for r in rows}

    async def write(self, state: PauseState) -> None:
        await self._run(
            f'INSERT INTO "{self.table}" (destination, paused, by, at) VALUES (?, ?, ?, ?) '
            "ON CONFLICT (destination) DO UPDATE SET paused = excluded.paused, by = excluded.by, at = excluded.at",
            (state.destination, int(state.paused), state.by, state.at),
        )


class PostgresControl:
    def __init__(self, dedup: Dedup) -> None:
        assert dedup.dsn is not None  # settings/tables.py requires it for backend = "postgres"
        self.dsn, self.table, self.timeout_s = dedup.dsn, f"{dedup.table}_control", dedup.timeout_s
        self._pool: Any = None

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg  # only when PostgreSQL is used

        try:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn.reveal(), min_size=0, max_size=2, timeout=self.timeout_s, command_timeout=self.timeout_s
                )
            async with self._pool.acquire() as conn:
                return list(await conn.fetch(sql, *args))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"control table {self.table}: {exc}") from exc

    async def start(self) -> None:
        await self._fetch(
            f'CREATE TABLE IF NOT EXISTS "{self.table}" (destination text PRIMARY KEY, paused boolean NOT NULL, '
            "by text NOT NULL, at double precision NOT NULL)"
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def states(self) -> dict[str, PauseState]:
        rows = await self._fetch(f'SELECT destination, paused, by, at FROM "{self.table}"')
        return {r[0]: PauseState(r[0], bool(r[1]), r[2], float(r[3])) for r in rows}

    async def write(self, state: PauseState) -> None:
        await self._fetch(
            f'INSERT INTO "{self.table}" (destination, paused, by, at) VALUES ($1, $2, $3, $4) '
            "ON CONFLICT (destination) DO UPDATE SET paused = excluded.paused, by = excluded.by, at = excluded.at",
            state.destination,
            state.paused,
            state.by,
            state.at,
        )
