"""The PostgreSQL journal schema: the records table, the events table partitioned by month, and
the migration of a table an earlier version wrote.

`<table>`: one row per (sender, MessageId), the dedup claim and the message record at once
(not partitioned: its primary key is the dedup key). `<table>_events`: every event,
`PARTITION BY RANGE (at)`, one partition per UTC month named `<table>_events_pYYYYMM`.
Partitions are made ahead of time (and on demand for an event outside them) as a plain
table then ATTACHed, which locks the parent only in SHARE UPDATE EXCLUSIVE mode: inserts go
on. Retention drops whole partitions with DETACH ... CONCURRENTLY then DROP, which does not
block inserts either; a detach interrupted half-way is finalized by the next purge.

Everything that changes the schema runs under a transaction-scoped advisory lock per
table, so replicas starting together take turns, and with a lock_timeout, so a DDL stuck
behind a long query gives up instead of queueing every insert behind it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

COLUMNS: dict[str, str] = {
    "digest": "text",
    "message_type": "text",
    "receiver": "text",
    "size": "integer",
    "received": "timestamptz",
    "status": "text",
    "attempts": "integer NOT NULL DEFAULT 0",
    "delivered_at": "timestamptz",
    "parked_reason": "text",
    "updated_at": "timestamptz",
}
"""Columns added since the first version of the table, with their types."""

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"


def month_of(unix: float) -> datetime:
    """The first instant of the UTC month holding `unix`."""
    t = datetime.fromtimestamp(unix, UTC)
    return datetime(t.year, t.month, 1, tzinfo=UTC)


def add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(events: str, month: datetime) -> str:
    return f"{events}_p{month:%Y%m}"


def month_of_partition(events: str, name: str) -> datetime | None:
    """The month a partition named by partition_name() holds; None for anything else."""
    suffix = name.removeprefix(f"{events}_p")
    if suffix == name or len(suffix) != 6 or not suffix.isdigit():
        return None
    return datetime(int(suffix[:4]), int(suffix[4:]), 1, tzinfo=UTC)


async def _locked(conn: PoolConnectionProxy, table: str) -> None:
    """Inside a transaction: wait for this table's schema lock (released at commit)."""
    await conn.execute(LOCK_TIMEOUT)
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"swgw-journal:{table}")


async def schema_ready(conn: PoolConnectionProxy, table: str, events: str) -> bool:
    """True when every table, column and index exists: a restart then takes no lock at all."""
    names = [table, events, f"{table}_at", f"{table}_received", f"{table}_parked"]
    names += [f"{events}_message", f"{events}_at"]
    present = await conn.fetchval(
        "SELECT count(*) FROM unnest($1::text[]) AS n WHERE to_regclass(quote_ident(n)) IS NOT NULL", names
    )
    if present != len(names):
        return False
    return not await _missing_columns(conn, table)


async def _missing_columns(conn: PoolConnectionProxy, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(quote_ident($1)) AND attnum > 0 "
        "AND NOT attisdropped",
        table,
    )
    present = {r["attname"] for r in rows}
    return [c for c in COLUMNS if c not in present]


async def create_schema(conn: PoolConnectionProxy, table: str, events: str) -> None:
    t = table
    async with conn.transaction():
        await _locked(conn, t)
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{t}" (sender text NOT NULL, message_id text NOT NULL, '
            "state text NOT NULL, token text, at timestamptz NOT NULL, digest text NOT NULL, "
            "destination text, received_at text, message_type text, receiver text, size integer, "
            "received timestamptz, status text, attempts integer NOT NULL DEFAULT 0, "
            "delivered_at timestamptz, parked_reason text, updated_at timestamptz, "
            "PRIMARY KEY (sender, message_id))"
        )
        missing = await _missing_columns(conn, t)
        if missing:
            # An earlier version's table: ADD COLUMN without a volatile default rewrites nothing.
            for column in missing:
                await conn.execute(f'ALTER TABLE "{t}" ADD COLUMN IF NOT EXISTS {column} {COLUMNS[column]}')
            await conn.execute(
                f'UPDATE "{t}" SET received = COALESCE(received, at), updated_at = COALESCE(updated_at, at), '
                "status = COALESCE(status, CASE state WHEN 'queued' THEN 'queued' ELSE 'received' END) "
                "WHERE received IS NULL OR status IS NULL"
            )
        await conn.execute(f'CREATE INDEX IF NOT EXISTS "{t}_at" ON "{t}" (at)')
        # Every index costs intake a write per message: paging and windows go by `received`; other
        # filters ride on it, but for parked messages, rare and looked for over years.
        await conn.execute(f'CREATE INDEX IF NOT EXISTS "{t}_received" ON "{t}" (received)')
        await conn.execute(f'CREATE INDEX IF NOT EXISTS "{t}_parked" ON "{t}" (received) WHERE status = \'parked\'')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{events}" (id bigserial, sender text NOT NULL, message_id text NOT NULL, '
            "at timestamptz NOT NULL, kind text NOT NULL, destination text NOT NULL DEFAULT '', status integer, "
            "error text, duration_s double precision, detail text NOT NULL DEFAULT '') PARTITION BY RANGE (at)"
        )
        await conn.execute(f'CREATE INDEX IF NOT EXISTS "{events}_message" ON "{events}" (sender, message_id, at)')
        await conn.execute(f'CREATE INDEX IF NOT EXISTS "{events}_at" ON "{events}" (at, id)')  # windows, in order


async def _exists(conn: PoolConnectionProxy, name: str) -> bool:
    """Read from pg_class itself, with this statement's snapshot: to_regclass() may answer from a
    backend's cache that has not yet seen a table another replica just committed."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1 AND relnamespace = "
        "(SELECT oid FROM pg_namespace WHERE nspname = current_schema()))",
        name,
    )
    return found


async def ensure_partition(conn: PoolConnectionProxy, table: str, events: str, month: datetime) -> None:
    """Make the partition for `month` unless it exists: a plain table, then ATTACH (inserts go on)."""
    name = partition_name(events, month)
    if await _exists(conn, name):
        return
    start, end = month.isoformat(), add_months(month, 1).isoformat()
    async with conn.transaction():
        await _locked(conn, table)
        if await _exists(conn, name):
            return  # another replica made it while we waited
        await conn.execute(f'CREATE TABLE "{name}" (LIKE "{events}" INCLUDING DEFAULTS)')
        # The constraint lets ATTACH skip its scan; the table is empty anyway.
        await conn.execute(
            f"ALTER TABLE \"{name}\" ADD CONSTRAINT \"{name}_range\" CHECK (at >= '{start}' AND at < '{end}')"
        )
        await conn.execute(
            f"ALTER TABLE \"{events}\" ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{start}') TO ('{end}')"
        )


async def partitions(conn: PoolConnectionProxy, events: str) -> list[tuple[str, datetime, bool]]:
    """(name, month, detach pending) of every monthly partition, oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname, i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(quote_ident($1))",
        events,
    )
    found = []
    for row in rows:
        month = month_of_partition(events, row["relname"])
        if month is not None:
            found.append((row["relname"], month, bool(row["inhdetachpending"])))
    return sorted(found, key=lambda p: p[1])


async def drop_partition(conn: PoolConnectionProxy, events: str, name: str, *, pending: bool, timeout_s: float) -> None:
    """Detach without blocking inserts (CONCURRENTLY waits for older transactions instead), then drop.

    A detach interrupted half-way leaves the partition "detach pending": FINALIZE completes it.
    """
    how = "FINALIZE" if pending else "CONCURRENTLY"
    await conn.execute(f'ALTER TABLE "{events}" DETACH PARTITION "{name}" {how}', timeout=timeout_s)
    await conn.execute(f'DROP TABLE IF EXISTS "{name}"', timeout=timeout_s)
