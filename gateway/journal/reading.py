"""The journal's queries, the same on both stores: only `_fetch` and the dialect differ.

A store (sqlite.py, postgres.py) inherits `StoreReading` and provides `table`,
`events_table`, `dialect` and `_fetch(sql, args)`; the SQL itself is queries.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.journal import queries
from gateway.journal.model import Event, EventKind, MessageFilter, MessageRecord, Page
from gateway.journal.queries import Dialect, Key, Query
from gateway.journal.store import WINDOW_CHUNK


class StoreReading:
    """JournalReader on top of one store's `_fetch`."""

    table: str
    events_table: str
    dialect: Dialect

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    async def message(self, sender: str, message_id: str) -> MessageRecord | None:
        q = Query(self.dialect)
        where = f"sender = {q(sender)} AND message_id = {q(message_id)}"
        rows = await self._fetch(f'SELECT {queries.RECORD} FROM "{self.table}" WHERE {where}', q.args)
        return queries.record(rows[0], self.dialect) if rows else None

    async def history(self, sender: str, message_id: str) -> list[Event]:
        q = Query(self.dialect)
        rows = await self._fetch(queries.history_sql(self.table, self.events_table, q, sender, message_id), q.args)
        return [queries.event(r, self.dialect) for r in rows]

    async def search(self, flt: MessageFilter, *, cursor: str | None = None, limit: int = 100) -> Page:
        q = Query(self.dialect)
        rows = await self._fetch(queries.search_sql(self.table, q, flt, cursor, limit), q.args)
        more = len(rows) > limit
        rows = rows[:limit]
        last = queries.encode_cursor(queries.record_key(rows[-1], self.dialect)) if more else None
        return Page([queries.record(r, self.dialect) for r in rows], last)

    async def window(self, since: float, until: float, destination: str | None = None) -> AsyncIterator[MessageRecord]:
        after: Key | None = None
        while True:
            q = Query(self.dialect)
            sql = queries.window_sql(self.table, q, since, until, destination, after, WINDOW_CHUNK)
            rows = await self._fetch(sql, q.args)
            for row in rows:
                yield queries.record(row, self.dialect)
            if len(rows) < WINDOW_CHUNK:
                return
            after = queries.record_key(rows[-1], self.dialect)

    async def destination_events(self, since: float, until: float, destination: str | None = None) -> list[Event]:
        q = Query(self.dialect)
        rows = await self._fetch(
            queries.destination_events_sql(self.events_table, q, since, until, destination), q.args
        )
        return [queries.event(r, self.dialect) for r in rows]

    async def events(
        self,
        since: float,
        until: float,
        *,
        kinds: Sequence[EventKind] | None = None,
        destination: str | None = None,
    ) -> AsyncIterator[Event]:
        after: tuple[float, int] | None = None
        while True:
            q = Query(self.dialect)
            sql = queries.events_sql(self.events_table, q, since, until, kinds, destination, after, WINDOW_CHUNK)
            rows = await self._fetch(sql, q.args)
            for row in rows:
                yield queries.event(row, self.dialect)
            if len(rows) < WINDOW_CHUNK:
                return
            after = (self.dialect.time_out(rows[-1][1]), rows[-1][9])
