"""The SQLite journal schema, and the in-place migration of a table an earlier version wrote.

`<table>`: one row per (sender, MessageId), the dedup claim and the message record at once.
`<table>_events`: every event, oldest first per message; destination events have an empty
sender and message_id. Times are unix seconds (REAL). The `queued` event of a confirm is
written by a trigger on the confirm's UPDATE (queued_event below).

A table from before body digests, or from before the journal, gains the missing columns
(ALTER TABLE ADD COLUMN: no rewrite); its rows get `received` from their `at` and a status
from their state (`queued` or `received`): what was known of them.
"""

from __future__ import annotations

import sqlite3

COLUMNS: dict[str, str] = {
    "digest": "TEXT",
    "message_type": "TEXT",
    "receiver": "TEXT",
    "size": "INTEGER",
    "received": "REAL",
    "status": "TEXT",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "delivered_at": "REAL",
    "parked_reason": "TEXT",
    "updated_at": "REAL",
}
"""Columns added since the first version of the table, with their types."""


def create_schema(db: sqlite3.Connection, table: str, events: str, *, journal: bool) -> None:
    t = table
    db.execute(
        f'CREATE TABLE IF NOT EXISTS "{t}" (sender TEXT NOT NULL, message_id TEXT NOT NULL, state TEXT NOT NULL, '
        "token TEXT, at REAL NOT NULL, digest TEXT NOT NULL, destination TEXT, received_at TEXT, "
        "message_type TEXT, receiver TEXT, size INTEGER, received REAL, status TEXT, "
        "attempts INTEGER NOT NULL DEFAULT 0, delivered_at REAL, parked_reason TEXT, updated_at REAL, "
        "PRIMARY KEY (sender, message_id))"
    )
    migrate(db, t)
    db.execute(f'CREATE INDEX IF NOT EXISTS "{t}_at" ON "{t}" (at)')
    # Every index costs intake a write per message: paging and windows go by `received`; other
    # filters ride on it, but for parked messages, rare and looked for over years.
    db.execute(f'CREATE INDEX IF NOT EXISTS "{t}_received" ON "{t}" (received)')
    db.execute(f'CREATE INDEX IF NOT EXISTS "{t}_parked" ON "{t}" (received) WHERE status = \'parked\'')
    db.execute(
        f'CREATE TABLE IF NOT EXISTS "{events}" (id INTEGER PRIMARY KEY, sender TEXT NOT NULL, '
        "message_id TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, destination TEXT NOT NULL DEFAULT '', "
        "status INTEGER, error TEXT, duration_s REAL, detail TEXT NOT NULL DEFAULT '')"
    )
    db.execute(f'CREATE INDEX IF NOT EXISTS "{events}_message" ON "{events}" (sender, message_id, at)')
    db.execute(f'CREATE INDEX IF NOT EXISTS "{events}_at" ON "{events}" (at)')
    queued_event(db, t, events, on=journal)


def migrate(db: sqlite3.Connection, table: str) -> None:
    """Add the columns an earlier version's table lacks, and fill what its rows can tell.

    Checked again under the write lock, so two processes starting at once do not both add them.
    """

    def missing() -> list[str]:
        present = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
        return [c for c in COLUMNS if c not in present]

    if not missing():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for column in missing():
            db.execute(f'ALTER TABLE "{table}" ADD COLUMN {column} {COLUMNS[column]}')
        db.execute(
            f'UPDATE "{table}" SET received = COALESCE(received, at), updated_at = COALESCE(updated_at, at), '
            "status = COALESCE(status, CASE state WHEN 'queued' THEN 'queued' ELSE 'received' END) "
            "WHERE received IS NULL OR status IS NULL"
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def queued_event(db: sqlite3.Connection, table: str, events: str, *, on: bool) -> None:
    """The confirm's `queued` event, appended by the confirm's own UPDATE (journal on).

    A trigger makes the record's move to queued and its event one statement: atomic, and one
    statement per confirm as before the journal (intake's cost; bench/). With the journal
    off there is no trigger. Every process on one file shares the config, so they agree.
    """
    if not on:
        db.execute(f'DROP TRIGGER IF EXISTS "{table}_queued"')
        return
    db.execute(
        f'CREATE TRIGGER IF NOT EXISTS "{table}_queued" AFTER UPDATE OF state ON "{table}" '
        "WHEN OLD.state = 'pending' AND NEW.state = 'queued' BEGIN "
        f'INSERT INTO "{events}" (sender, message_id, at, kind, destination) '
        "VALUES (NEW.sender, NEW.message_id, NEW.at, 'queued', NEW.destination); END"
    )
