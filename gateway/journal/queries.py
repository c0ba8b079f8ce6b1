"""The journal's reading SQL and row mapping, once for both stores.

The two stores differ in placeholders (`?` for SQLite, `$n` for PostgreSQL) and in how a
time is stored (unix REAL in SQLite, timestamptz in PostgreSQL); a Dialect says which, and
everything else (filters, keyset paging, the shape of a record or an event) is written here
once, so the status API, the admin history and the report read the same thing from either.

Paging is keyset paging on (received, sender, message_id): newest first for `search`,
oldest first for `window`. A page starts strictly after the last row of the previous one,
so rows inserted meanwhile (newer, at the front) never shift a later page: no duplicates,
no skips. The cursor is that last key, opaque to callers (base64 of JSON).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.journal.model import MOVES_FROM, STATUS_AFTER, Event, EventKind, MessageFilter, MessageRecord, Status
from gateway.timeutil import iso_unix

RECORD = (
    "sender, message_id, message_type, receiver, destination, size, digest, received_at, "
    "COALESCE(status, CASE state WHEN 'queued' THEN 'queued' ELSE 'received' END), attempts, "
    "delivered_at, parked_reason, updated_at, received"
)
"""The columns a record is read from, in `record()`'s order. A row claimed by a replica still
running the version before the journal (a rolling upgrade) has no status: its state tells."""

EVENT = "kind, at, sender, message_id, destination, status, error, duration_s, detail"
"""The columns an event is read from, in `event()`'s order."""

EVENT_INSERT = "sender, message_id, at, kind, destination, status, error, duration_s, detail"
"""The columns an event is written to, in `event_row()`'s order."""

Key = tuple[float, str, str]
"""(received, sender, message_id): the paging order of records."""


class InvalidCursor(ValueError):
    """A cursor this journal did not hand out (the API answers 400)."""


@dataclass(frozen=True)
class Dialect:
    """`numbered`: `$1, $2` placeholders (PostgreSQL) instead of `?` (SQLite).
    `time_in`/`time_out` convert a unix time to the database's time and back."""

    numbered: bool
    time_in: Callable[[float], Any]
    time_out: Callable[[Any], float]


class Query:
    """Collects the arguments of one statement and hands out their placeholders."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.args: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}" if self.dialect.numbered else "?"

    def time(self, unix: float) -> str:
        return self(self.dialect.time_in(unix))


def _opt_time(d: Dialect, value: Any) -> str | None:
    return iso_unix(d.time_out(value)) if value is not None else None


def record(row: Sequence[Any], d: Dialect) -> MessageRecord:
    """A record from a row of RECORD. Rows migrated from before the journal lack the newer columns."""
    updated = row[12] if row[12] is not None else row[13]
    return MessageRecord(
        sender=row[0],
        message_id=row[1],
        message_type=row[2] or "",
        receiver=row[3] or "",
        destination=row[4] or "",
        size=row[5] or 0,
        sha256=row[6] or "",
        received_at=row[7] or "",
        status=Status(row[8]),
        attempts=row[9] or 0,
        delivered_at=_opt_time(d, row[10]),
        parked_reason=row[11],
        updated_at=_opt_time(d, updated) or "",
    )


def record_key(row: Sequence[Any], d: Dialect) -> Key:
    return (d.time_out(row[13]), row[0], row[1])


def event(row: Sequence[Any], d: Dialect) -> Event:
    """An event from a row of EVENT."""
    return Event(
        kind=EventKind(row[0]),
        at=d.time_out(row[1]),
        sender=row[2],
        message_id=row[3],
        destination=row[4],
        status=row[5],
        error=row[6],
        duration_s=row[7],
        detail=row[8],
    )


def event_row(e: Event, d: Dialect) -> tuple[Any, ...]:
    """The values of one event for EVENT_INSERT."""
    return (
        e.sender,
        e.message_id,
        d.time_in(e.at),
        e.kind.value,
        e.destination,
        e.status,
        e.error,
        e.duration_s,
        e.detail,
    )


@dataclass(frozen=True)
class StatusMove:
    """What a message event does to its record (STATUS_AFTER, attempts, delivered_at, parked_reason)."""

    status: Status
    allowed_from: frozenset[Status]  # the move applies only from these (MOVES_FROM)
    attempts: int
    delivered: bool  # set delivered_at to the event's time
    reason_changes: bool  # set parked_reason to `reason` (None clears it)
    reason: str | None


def _template(kind: EventKind) -> StatusMove:
    parked = kind in (EventKind.PARKED, EventKind.DEAD_LETTERED)
    return StatusMove(
        status=STATUS_AFTER[kind],
        allowed_from=MOVES_FROM.get(kind, frozenset(Status)),
        attempts=1 if kind is EventKind.ATTEMPT else 0,
        delivered=kind is EventKind.DELIVERED,
        reason_changes=parked or kind in (EventKind.REPLAYED, EventKind.DELIVERED),  # those two clear it
        reason=None,
    )


_TEMPLATES = {kind: _template(kind) for kind in STATUS_AFTER}  # per kind, built once: this is per delivery
_PARKING = (EventKind.PARKED, EventKind.DEAD_LETTERED)


def status_move(e: Event) -> StatusMove | None:
    """None for events that leave the record as it is (destination events, duplicates, returns)."""
    template = _TEMPLATES.get(e.kind)
    if template is None or not e.message_id:
        return None
    if e.kind in _PARKING:
        return dataclasses.replace(template, reason=e.error or e.detail or e.kind.value)
    return template


def status_moves(events: Sequence[Event]) -> list[tuple[Event, StatusMove]]:
    """The moves a batch makes, in order, with an attempt folded into its message's delivery.

    The common case of a batch is a delivery's last attempt followed by its `delivered`
    (delivery posts the one and records the other in the same tick). A `delivered` moves the
    status from any status (MOVES_FROM), so an earlier move of the same message in the batch
    changes nothing but the attempt count and is folded into it: one UPDATE instead of two,
    with exactly the same result.
    """
    out: list[tuple[Event, StatusMove] | None] = []
    last: dict[tuple[str, str], int] = {}  # message -> index in `out` of its latest move
    for e in events:
        m = status_move(e)
        if m is None:
            continue
        key = (e.sender, e.message_id)
        i = last.get(key)
        if i is not None and e.kind is EventKind.DELIVERED:
            earlier = out[i]
            assert earlier is not None
            if not earlier[1].delivered and not earlier[1].reason_changes:
                m = dataclasses.replace(m, attempts=m.attempts + earlier[1].attempts)
                out[i] = None
        last[key] = len(out)
        out.append((e, m))
    return [x for x in out if x is not None]


def move_sql(table: str, q: Query, e: Event, m: StatusMove) -> str:
    """The UPDATE applying one status move to its record; `q` collects its arguments.

    Built left to right: SQLite's `?` placeholders are bound in the order they appear.
    """

    # A move applies only from the statuses in MOVES_FROM; the attempt count grows either way.
    # Every SET expression reads the row as it was before this UPDATE. Placeholders are made
    # in the order they appear (SQLite's `?` are positional), hence `allowed()` inline.
    # Always len(Status) placeholders (padded by repeating one), so every event's UPDATE has
    # the same text: the PostgreSQL store runs one executemany per batch.
    values = sorted(st.value for st in m.allowed_from)
    values += values[:1] * (len(Status) - len(values))

    def allowed() -> str:
        return "status IN (" + ", ".join(q(v) for v in values) + ")"

    sql = f'UPDATE "{table}" SET status = CASE WHEN {allowed()} THEN {q(m.status.value)} ELSE status END, '
    sql += f"updated_at = {q.time(e.at)}, attempts = attempts + {q(m.attempts)}, "
    sql += f"delivered_at = CASE WHEN {q(m.delivered)} AND {allowed()} THEN {q.time(e.at)} ELSE delivered_at END, "
    sql += f"parked_reason = CASE WHEN {q(m.reason_changes)} AND {allowed()} THEN {q(m.reason)} ELSE parked_reason END "
    return sql + f"WHERE sender = {q(e.sender)} AND message_id = {q(e.message_id)}"


_MOVE_STATEMENTS: dict[tuple[str, Dialect], str] = {}


def move_statement(table: str, dialect: Dialect) -> str:
    """`move_sql`'s text, the same for every event, built once per table (hot: one per delivery)."""
    key = (table, dialect)
    text = _MOVE_STATEMENTS.get(key)
    if text is None:
        e = Event(EventKind.DELIVERED, 0.0, "s", "m")
        m = status_move(e)
        assert m is not None
        text = _MOVE_STATEMENTS[key] = move_sql(table, Query(dialect), e, m)
    return text


@functools.lru_cache(maxsize=64)
def _allowed_values(allowed_from: frozenset[Status]) -> tuple[str, ...]:
    values = sorted(st.value for st in allowed_from)
    return tuple(values + values[:1] * (len(Status) - len(values)))


def move_args(e: Event, m: StatusMove, dialect: Dialect) -> list[Any]:
    """The arguments of `move_statement` for one move, in `move_sql`'s order (a test pins it)."""
    values = _allowed_values(m.allowed_from)
    at = dialect.time_in(e.at)
    return [
        *values, m.status.value, at, m.attempts,
        m.delivered, *values, at,
        m.reason_changes, *values, m.reason,
        e.sender, e.message_id,
    ]  # fmt: skip


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        received, sender, message_id = raw
        if isinstance(received, int | float) and isinstance(sender, str) and isinstance(message_id, str):
            return (float(received), sender, message_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        pass
    raise InvalidCursor(f"not a cursor this journal handed out: {cursor[:40]!r}")


def _after(q: Query, key: Key, *, newest_first: bool) -> str:
    """Rows strictly after `key` in the paging order (written so an index on `received` serves it)."""
    op = "<" if newest_first else ">"
    received, sender, message_id = key
    r1, r2 = q.time(received), q.time(received)
    return (
        f"received {op}= {r1} AND (received {op} {r2} OR sender {op} {q(sender)} "
        f"OR (sender = {q(sender)} AND message_id {op} {q(message_id)}))"
    )


def search_sql(table: str, q: Query, flt: MessageFilter, cursor: str | None, limit: int) -> str:
    """Records matching `flt`, newest first, after `cursor`; LIMIT limit + 1 tells whether a page follows."""
    where = ["received IS NOT NULL"]
    for column, value in (
        ("status", flt.status.value if flt.status is not None else None),
        ("destination", flt.destination),
        ("sender", flt.sender),
        ("message_type", flt.message_type),
    ):
        if value is not None:
            where.append(f"{column} = {q(value)}")
    if flt.since is not None:
        where.append(f"received >= {q.time(flt.since)}")
    if flt.until is not None:
        where.append(f"received < {q.time(flt.until)}")
    if cursor is not None:
        where.append(_after(q, decode_cursor(cursor), newest_first=True))
    return (
        f'SELECT {RECORD} FROM "{table}" WHERE {" AND ".join(where)} '
        f"ORDER BY received DESC, sender DESC, message_id DESC LIMIT {q(limit + 1)}"
    )


def window_sql(
    table: str, q: Query, since: float, until: float, destination: str | None, after: Key | None, chunk: int
) -> str:
    """One chunk of the records received in [since, until), oldest first, after `after`."""
    where = [f"received >= {q.time(since)}", f"received < {q.time(until)}"]
    if destination is not None:
        where.append(f"destination = {q(destination)}")
    if after is not None:
        where.append(_after(q, after, newest_first=False))
    return (
        f'SELECT {RECORD} FROM "{table}" WHERE {" AND ".join(where)} '
        f"ORDER BY received, sender, message_id LIMIT {q(chunk)}"
    )


def history_sql(table: str, events: str, q: Query, sender: str, message_id: str) -> str:
    """The message's events oldest first, led by its `received` event, which is the record itself.

    The receipt is not written twice: the claim's row holds it (received, destination), and a
    row per event costs intake a write. A re-send after the dedup window starts a new life on
    the same row; the earlier life keeps its stored events (queued, attempts, ...).
    """
    sql = f"SELECT '{EventKind.RECEIVED.value}', received, sender, message_id, COALESCE(destination, ''), "
    sql += f"NULL, NULL, NULL, '', 0 FROM \"{table}\" WHERE sender = {q(sender)} AND message_id = {q(message_id)} "
    sql += f'AND received IS NOT NULL UNION ALL SELECT {EVENT}, id FROM "{events}" '
    return sql + f"WHERE sender = {q(sender)} AND message_id = {q(message_id)} ORDER BY 2, 10"


def destination_events_sql(events: str, q: Query, since: float, until: float, destination: str | None) -> str:
    """Circuit events in [since, until), and per destination the last one before `since`, oldest first.

    Built left to right: SQLite's `?` placeholders are bound in the order they appear.
    """
    base = f"sender = '' AND message_id = '' AND kind = '{EventKind.CIRCUIT.value}'"
    sql = f"SELECT {EVENT}, id FROM (SELECT {EVENT}, id, row_number() OVER "
    sql += f'(PARTITION BY destination ORDER BY at DESC, id DESC) AS n FROM "{events}" WHERE {base}'
    if destination is not None:
        sql += f" AND destination = {q(destination)}"
    sql += f" AND at < {q.time(since)}) AS last WHERE n = 1 "
    sql += f'UNION ALL SELECT {EVENT}, id FROM "{events}" WHERE {base}'
    if destination is not None:
        sql += f" AND destination = {q(destination)}"
    sql += f" AND at >= {q.time(since)} AND at < {q.time(until)}"
    return sql + " ORDER BY 2, 10"


def events_sql(
    events: str,
    q: Query,
    since: float,
    until: float,
    kinds: Sequence[EventKind] | None,
    destination: str | None,
    after: tuple[float, int] | None,
    chunk: int,
) -> str:
    """One chunk of the events in [since, until), oldest first, after `after` (at, id); the id is column 10."""
    sql = f'SELECT {EVENT}, id FROM "{events}" WHERE at >= {q.time(since)} AND at < {q.time(until)}'
    if kinds is not None:
        sql += f" AND kind IN ({', '.join(q(k.value) for k in kinds) or 'NULL'})"
    if destination is not None:
        sql += f" AND destination = {q(destination)}"
    if after is not None:
        sql += f" AND at >= {q.time(after[0])} AND (at > {q.time(after[0])} OR id > {q(after[1])})"
    return sql + f" ORDER BY at, id LIMIT {q(chunk)}"
