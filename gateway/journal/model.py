"""The journal's vocabulary: statuses, events, message records, and how to ask for them.

Everything here is a frozen value; the stores and the writer speak only these types, so
intake, delivery and operations can journal without knowing which database is behind it.

A message's life, as events (`EventKind`), and the status each leaves it in (`Status`):

    received ──▶ queued ──▶ attempt* ──▶ delivered
       │            │          ├──────▶ parked ──(replayed)──▶ queued ...
       │            │          └──────▶ returned (handed back to its queue: circuit, pause)
       └ (publish failed: the claim is released; nothing was promised, no record stays)
    duplicate / conflict: a re-send of an accepted id (200) or with another body (409)
    dead_lettered: RabbitMQ's delivery limit moved it to parking (a worker bug, or crashes)

Destination events (sender and message_id empty): `circuit` with detail `open`,
`half_open` or `closed`, so outages have a start and an end.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class Status(enum.StrEnum):
    """Where a message is now; what `GET /v1/messages/{id}` answers in `status`."""

    RECEIVED = "received"  # claimed, publish not yet confirmed (no 202 was given yet)
    QUEUED = "queued"  # the broker confirmed it (202); waiting for delivery
    DELIVERING = "delivering"  # at least one attempt made, not delivered yet
    DELIVERED = "delivered"  # the backend answered 2xx
    PARKED = "parked"  # the backend rejected it, or it used max_attempts; ops may replay it
    DEAD_LETTERED = "dead_lettered"  # the queue's delivery limit moved it to parking


class EventKind(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    ATTEMPT = "attempt"
    DELIVERED = "delivered"
    PARKED = "parked"
    RETURNED = "returned"
    REPLAYED = "replayed"
    DEAD_LETTERED = "dead_lettered"
    CIRCUIT = "circuit"


STATUS_AFTER: dict[EventKind, Status] = {
    EventKind.QUEUED: Status.QUEUED,
    EventKind.ATTEMPT: Status.DELIVERING,
    EventKind.DELIVERED: Status.DELIVERED,
    EventKind.PARKED: Status.PARKED,
    EventKind.REPLAYED: Status.QUEUED,
    EventKind.DEAD_LETTERED: Status.DEAD_LETTERED,
}
"""The status a message event leaves its message in; other kinds leave it as it was."""

MOVES_FROM: dict[EventKind, frozenset[Status]] = {
    # Events of one message can commit out of order across processes (a `swgw replay` in
    # another process commits `replayed` after the gateway committed the redelivery's
    # `delivered`), and a crash repeats attempts of a message already delivered. A move is
    # applied only from the statuses it can truthfully follow, so a status never goes back.
    EventKind.QUEUED: frozenset({Status.RECEIVED}),
    EventKind.ATTEMPT: frozenset({Status.RECEIVED, Status.QUEUED, Status.DELIVERING}),
    EventKind.DELIVERED: frozenset(Status),
    EventKind.PARKED: frozenset(Status) - {Status.DELIVERED},
    EventKind.REPLAYED: frozenset({Status.PARKED, Status.DEAD_LETTERED}),
    EventKind.DEAD_LETTERED: frozenset(Status) - {Status.DELIVERED},
}
"""From which statuses each STATUS_AFTER move applies; from any other the status stays."""


@dataclass(frozen=True)
class Event:
    """One thing that happened, at unix time `at`.

    `status` is the backend's HTTP status of an attempt; `error` an error class (timeout,
    refused, reset) or a parking reason; `duration_s` an attempt's duration; `detail` a short
    excerpt of the backend's answer, the operator action of a replay, or the circuit state.
    """

    kind: EventKind
    at: float
    sender: str = ""
    message_id: str = ""
    destination: str = ""
    status: int | None = None
    error: str | None = None
    duration_s: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class MessageRecord:
    """A message as the journal knows it now (one row; the dedup claim of the same id)."""

    sender: str
    message_id: str
    message_type: str
    receiver: str
    destination: str
    size: int
    sha256: str
    received_at: str  # ISO-8601, as in the receipt
    status: Status
    attempts: int
    delivered_at: str | None
    parked_reason: str | None
    updated_at: str


@dataclass(frozen=True)
class MessageFilter:
    """`GET /admin/messages` and `swgw messages list` filters; None means any."""

    status: Status | None = None
    destination: str | None = None
    sender: str | None = None
    message_type: str | None = None
    since: float | None = None  # received_at >= since (unix)
    until: float | None = None  # received_at < until (unix)


@dataclass(frozen=True)
class Page:
    """One page of records, newest first; `next_cursor` is None on the last page."""

    records: list[MessageRecord]
    next_cursor: str | None


class JournalReader(Protocol):
    """The queries behind the status API, the admin API, the report and reconciliation."""

    async def message(self, sender: str, message_id: str) -> MessageRecord | None: ...

    async def history(self, sender: str, message_id: str) -> list[Event]:
        """Every event of the message, oldest first (`received` first: the record's receipt)."""
        ...

    async def search(self, flt: MessageFilter, *, cursor: str | None = None, limit: int = 100) -> Page: ...

    def window(self, since: float, until: float, destination: str | None = None) -> AsyncIterator[MessageRecord]:
        """Every message received in [since, until), oldest first, streamed (a report may hold 25,000 a day)."""
        ...

    async def destination_events(self, since: float, until: float, destination: str | None = None) -> list[Event]:
        """Circuit events in the window (and the last one before it, so an open period's start is known)."""
        ...

    def events(
        self,
        since: float,
        until: float,
        *,
        kinds: Sequence[EventKind] | None = None,
        destination: str | None = None,
    ) -> AsyncIterator[Event]:
        """Every event that happened in [since, until), oldest first, streamed; `kinds` None means any.

        What the report counts that no record's status shows: duplicates and conflicts
        (`kinds=[EventKind.DUPLICATE, EventKind.CONFLICT]`), attempts, replays. Receipts are the
        records themselves (`window()`), not event rows: `received` is never streamed here.
        """
        ...


class JournalWriter(Protocol):
    """How intake, delivery and operations journal (gateway/journal/writer.py implements it)."""

    async def record(self, event: Event) -> None:
        """Return once `event` is committed (a group commit per event-loop tick)."""
        ...

    def post(self, event: Event) -> None:
        """Queue `event` for the next commit and return at once (events nobody waits on)."""
        ...


class EventStore(Protocol):
    """What the writer needs from a store: one transaction per batch."""

    async def write(self, events: Sequence[Event]) -> None:
        """Insert the events and move their messages' status (STATUS_AFTER), atomically."""
        ...
