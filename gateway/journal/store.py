"""What a journal store is: the protocols intake's dedup policy and the journal speak, and their values.

One row per (sender, MessageId) is both the dedup claim and the message record:

    claim(arrival)      one statement: takes the id as "pending" and writes the record's
                        columns (type, receiver, destination, size, SHA-256, received_at),
                        status `received`; answers Seen / InFlight instead if the id is taken
    confirm(claim, r)   one statement: the row becomes "queued", status `queued` (unless
                        delivery already moved it on), and the `queued` event is appended
                        (journal on); the `received` event is the row itself (history())
    release(claim)      deletes the pending row: nothing was promised, nothing is kept
    write(events)       one transaction per batch: events appended, statuses moved (STATUS_AFTER)
    purge()             stale claims, then records and events past retention, in short batches

The dedup window (`[dedup] window_days`) only decides what is a duplicate: a re-send after it
takes the row over as a new message (its old events stay). Rows and events are kept
`[journal] retention_days` (journal off: rows go after the window, as before the journal).

The stores (sqlite.py, postgres.py) import only this module and model.py for their types.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.journal.model import EventStore, JournalReader
from gateway.messages import QueuedMessage
from gateway.settings.model import Dedup, JournalSettings
from gateway.timeutil import Clock, unix_or_none

PURGE_BATCH = 1_000
"""Rows per DELETE when purging: each batch is its own short transaction, so intake's
claims and the journal's writes get the database between two batches."""

WINDOW_CHUNK = 500
"""Rows per query when a window is streamed (keyset pages, no transaction held open)."""

JOURNAL_ON = JournalSettings()
"""The stores' default: journal on, default retention."""


@dataclass(frozen=True)
class Receipt:
    """What the partner was answered when the id was first queued."""

    message_id: str
    destination: str
    received_at: str
    duplicate: bool = False

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message_id": self.message_id,
            "status": "queued",
            "destination": self.destination,
            "received_at": self.received_at,
        }
        if self.duplicate:
            body["duplicate"] = True
        return body


@dataclass(frozen=True)
class Arrival:
    """The message record's columns, written in the claim's own statement.

    There is no partner column: intake refuses a From that is not the authenticated
    partner, so the sender is the partner. `sha256` is the hex digest of the exact body
    bytes (the dedup digest); `received` is `received_at` as a unix time.
    """

    sender: str
    message_id: str
    message_type: str
    receiver: str
    destination: str
    size: int
    sha256: str
    received_at: str
    received: float

    @classmethod
    def of(cls, message: QueuedMessage, *, now: float) -> Arrival:
        """The record of `message`; `now` stands in for an unreadable `received_at`."""
        received = unix_or_none(message.received_at)
        return cls(
            sender=message.sender,
            message_id=message.message_id,
            message_type=message.message_type,
            receiver=message.receiver,
            destination=message.destination,
            size=len(message.body),
            sha256=hashlib.sha256(message.body).hexdigest(),
            received_at=message.received_at,
            received=received if received is not None else now,
        )


@dataclass(frozen=True)
class Claimed:
    """This request owns (sender, message_id) and may publish; `token` proves ownership.

    `at` is when the claim was written (the store's clock), just before the publish. The
    confirm stamps the `queued` event and the window's start with it, not with the confirm's
    own time: delivery can consume (and journal an attempt) before the confirm reaches intake,
    and a history must never show an attempt before the message was queued.
    """

    sender: str
    message_id: str
    token: str
    at: float = 0.0


@dataclass(frozen=True)
class Seen:
    """Already queued within the window.

    `digest` is the hex SHA-256 of the first body, or None for an entry written before
    digests were stored (its content is unknown, so a re-send is never called a conflict).
    """

    receipt: Receipt
    digest: str | None


@dataclass(frozen=True)
class InFlight:
    """Another request is publishing this id right now."""


ClaimResult = Claimed | Seen | InFlight


class DedupStore(Protocol):
    """What intake's dedup policy needs. Every method raises gateway.errors.StoreError when the store fails."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, arrival: Arrival) -> ClaimResult:
        """Atomically take (sender, id) as pending, with the record's columns, unless it is
        queued within the window or freshly pending."""
        ...

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        """Mark our claim queued with its receipt (and journal it); False if the claim is no longer ours."""
        ...

    async def release(self, claim: Claimed) -> None:
        """Delete our pending claim (publish failed), so a retry is accepted."""
        ...

    async def purge(self) -> int:
        """Delete stale claims, then records and events past retention; returns how many rows went."""
        ...


class JournalStore(DedupStore, EventStore, JournalReader, Protocol):
    """A store that is all three: intake's seen ids, the writer's target and the read side's source."""


class Limits:
    """Cut-off times shared by the SQL stores.

    Journal on: records and events are kept `retention_days`. Journal off: a record is only
    a seen id and goes once it is out of the dedup window, as before the journal existed.
    """

    def __init__(self, settings: Dedup, journal: JournalSettings, clock: Clock) -> None:
        self.window_s = settings.window_days * 86_400.0
        self.claim_timeout_s = settings.claim_timeout_s
        self.keep_s = journal.retention_days * 86_400.0 if journal.enabled else self.window_s
        self.journal = journal.enabled
        self.clock = clock

    def cutoffs(self) -> tuple[float, float, float]:
        """(now, queued entries older than this are out of the window, pending claims older than this are stale)."""
        now = self.clock()
        return now, now - self.window_s, now - self.claim_timeout_s

    def kept_since(self) -> float:
        """Records received and events that happened before this are past retention."""
        return self.clock() - self.keep_s
