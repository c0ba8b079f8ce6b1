"""What delivery writes to the journal, and the rule it keeps: never an ack before its event.

Every settlement that acks a delivery (`delivered`, `parked`, `returned`) is journaled with
`record()`, which returns once the event is committed, and only then acked (deliverer.py,
`Deliverer._settle`). What a crash can do to that order:

- killed before the commit: no event and no ack. The broker redelivers the message and its
  settlement is journaled then (the POST may be repeated: at-least-once, as always).
- killed after the commit, before the ack reached the broker: the event is on disk (SQLite
  WAL or PostgreSQL, committed) and the message is redelivered, so its settlement is
  journaled once more. A repeated event, never a missing one.
- the journal store down: `record()` keeps waiting while the writer retries, so the message
  stays unacked in the worker (holding its prefetch slot, which slows the destination down
  to a stop), never nack-requeued: a requeue would spend the quorum queue's delivery count.
  When the gateway stops meanwhile, the message is left unacked and the broker takes it back.

Attempts and circuit changes are `post()`ed: nobody waits on them. The writer commits in
arrival order, so when the `record()` of a settlement returns, every attempt of that message
posted before it is committed too: an acked message always has its attempts. Attempts of a
message whose delivery a crash interrupted may be missing (it was not acked: it is tried
again, and those attempts are journaled). A requeue (a bug, or a hand-back whose republish
failed) is journaled `returned` (posted), or `dead_lettered` (recorded, before the nack) when
that requeue makes RabbitMQ dead-letter the message (`dead_letters`).

With the journal off the writer is a NullWriter: every call returns at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from gateway.delivery.sender import Answer, error_class
from gateway.errors import DeliveryError, StoreError
from gateway.journal.model import Event, EventKind, JournalWriter
from gateway.messages import EXCERPT_MAX, QueuedMessage
from gateway.timeutil import Clock

log = logging.getLogger("swgw.delivery")


def dead_letters(raw: AbstractIncomingMessage, delivery_limit: int) -> bool:
    """Will requeueing `raw` now make its quorum queue dead-letter it?

    RabbitMQ counts the returns of a message in `x-delivery-count` (0 or absent on the first
    delivery) and dead-letters a message returned while the count is at `x-delivery-limit`
    (RabbitMQ 3.10, limit 2: delivered with counts 0, 1, 2; the third requeue dead-letters).
    """
    count = (raw.headers or {}).get("x-delivery-count", 0)
    count = count if isinstance(count, int) and not isinstance(count, bool) else 0
    return count >= delivery_limit


class DeliveryJournal:
    """The journal events of one destination's deliveries, on the process's JournalWriter."""

    def __init__(self, writer: JournalWriter, destination: str, *, clock: Clock = time.time) -> None:
        self.writer = writer
        self.destination = destination
        self.clock = clock

    def _event(self, kind: EventKind, msg: QueuedMessage, at: float | None = None, **fields: Any) -> Event:
        return Event(
            kind,
            self.clock() if at is None else at,
            sender=msg.sender,
            message_id=msg.message_id,
            destination=self.destination,
            **fields,
        )

    def attempt(
        self,
        msg: QueuedMessage,
        at: float,
        duration_s: float,
        *,
        answer: Answer | None = None,
        failure: DeliveryError | None = None,
    ) -> None:
        """One POST that ended: answered 2xx (`answer`) or failed (`failure`, with a status if answered)."""
        status: int | None
        if answer is not None:
            status, error, detail = answer.status, None, answer.excerpt
        else:
            assert failure is not None
            status, error = failure.status, error_class(failure)
            detail = failure.excerpt or ("" if status is not None else str(failure))
        self.writer.post(
            self._event(
                EventKind.ATTEMPT,
                msg,
                at,
                status=status,
                error=error,
                duration_s=duration_s,
                detail=detail[:EXCERPT_MAX],
            )
        )

    async def settled(
        self,
        kind: EventKind,
        msg: QueuedMessage,
        *,
        status: int | None = None,
        error: str | None = None,
        detail: str = "",
    ) -> bool:
        """Commit a settlement's event; False if the journal closed first (the caller must not ack)."""
        try:
            await self.writer.record(self._event(kind, msg, status=status, error=error, detail=detail[:EXCERPT_MAX]))
        except StoreError as exc:
            log.warning(
                "not settling %s: its %s event was not written (%s); the broker will redeliver it",
                msg.message_id,
                kind.value,
                exc,
                extra={"event": "journal_unwritten", "message_id": msg.message_id, "destination": self.destination},
            )
            return False
        return True

    def requeued(self, msg: QueuedMessage, reason: str, detail: str) -> None:
        """A nack-requeue that is not the last: handed back, spending a delivery count."""
        self.writer.post(self._event(EventKind.RETURNED, msg, error=reason, detail=f"requeued: {detail}"[:EXCERPT_MAX]))

    def circuit(self, state: str, at: float) -> None:
        """The destination's circuit moved to `state` (open, half_open, closed)."""
        self.writer.post(Event(EventKind.CIRCUIT, at, destination=self.destination, detail=state))
