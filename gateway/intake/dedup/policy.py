"""Duplicate elimination at intake: a re-sent MessageId gets its original receipt back.

Partners re-send when they are unsure (a timeout on their side, a retry after a 503, a
batch re-sent after a long outage). The key is (sender, MessageId); an entry lives for
`window_days` (default 7) after its receipt, then expires. Each entry keeps the SHA-256 of
the exact body bytes first received under the id, so a re-send can be told from a reuse.

The protocol around one publish (`Deduplicator.publish_once`)::

    claim (sender, id) as "pending" ──taken──▶ publish ──confirmed──▶ confirm: "queued" + receipt → 202
      │ "queued", same body digest → 200, the original receipt, `duplicate: true` (nothing is published)
      │ "queued", other body digest → 409 `message_id_reused` (nothing is published)
      │ "pending" (another request is publishing it right now) → 503 + Retry-After: 1
      ├ publish failed (down, blocked, nack, unroutable) → release: the 503 stands, the retry is accepted
      └ no confirm within confirm_timeout_s → 503, but the claim is kept and the publish keeps
        waiting in the background (at most `late_confirm_wait_s`): a late ack records "queued"
        (the retry gets 200 + receipt), a late nack/return/lost connection releases the claim

Honest guarantees:
- Two simultaneous posts of the same id: exactly one is published; the other gets a 503
  (`duplicate_in_flight`) and, on retry, the 200 duplicate receipt, or 409 if its body differs.
  Never two 202s for one id.
- A body that differs (by SHA-256 of the bytes received, so whitespace counts) from the one
  accepted under the same id gets 409 `message_id_reused`; the first message stands. Entries
  written before the digest was stored have no digest: they answer 200 duplicate, never 409.
- A publish that is not confirmed is never recorded as seen. After a confirm *timeout* the
  claim is kept while the broker's answer is awaited: the partner's retries get 503
  `duplicate_in_flight` until it comes. A late ack records the id as queued, so the retry
  gets 200 and the message is queued once. A late nack or return releases the claim and
  the retry is queued. A connection lost before the answer (or a request cancelled while
  waiting for it, as at shutdown) also releases it, although the broker may have queued the
  message: that retry can be queued twice (same X-Message-Id).
- No answer within `late_confirm_wait_s`, a gateway stopped while waiting, or one that dies
  between the broker's confirm and the store update (or whose store update fails) leaves a
  "pending" claim. After `claim_timeout_s` it is stale: the next post of that id takes it
  over and is queued again (at worst one extra delivery, same id). The config insists on
  `claim_timeout_s` > `broker.confirm_timeout_s` + `late_confirm_wait_s`, so a claim whose
  outcome is still being awaited is never taken over.
- When the store itself is unreachable, `on_store_error = "reject"` (default) answers 503
  like a broker outage; `"accept"` queues without the duplicate check and logs it.

Backends (`[dedup] backend`):
- `"sqlite"` (default): one file on local disk, stdlib sqlite3 in worker threads.
  Survives restarts and is shared by every gateway process *on the same host* (SQLite file
  locking, `BEGIN IMMEDIATE`); it needs nothing but a writable path, so the single-node
  gateway keeps its full promise with nothing extra to run. Not for replicas on several
  hosts or on network filesystems: each host would remember only its own receipts.
- `"postgres"`: a table in PostgreSQL via asyncpg, shared by every replica; switch to it as
  soon as more than one host takes traffic. `INSERT ... ON CONFLICT` makes the claim atomic
  across replicas. The table is created if missing. The gateway starts while PostgreSQL is
  down and every request answers per `on_store_error` until it is back (the pool reconnects
  on demand).
- `"none"`: no duplicate check (every post is queued).
Both SQL stores add the columns a table created by an earlier version lacks (the body
digest, the journal's record columns) in place.

The store is the journal's (gateway/journal/): the claim row is also the message record,
written with the message's type, receiver, destination, size and digest in the claim's own
statement, and the confirm appends the `queued` event in its own statement, so the journal
costs intake no extra round trip. A release deletes the row.
A re-send answered 200 and a reuse answered 409 are journaled `duplicate` / `conflict` with
the writer's `post()`: the partner's answer never waits on them, and the writer's `close()`
flushes them on a clean shutdown (a crash may lose the last of them: they change no status).

This module holds the policy; the waits after a confirm timeout are late.py; the store
protocol and its values are gateway/journal/store.py.

Times come from the gateway's clock (`clock`, epoch seconds), so replicas' clocks should be
NTP-synchronised; skew only shifts expiry by the skew. Entries out of the window are ignored
at once (lazily): a re-send then takes the row over as a new message. Rows are deleted only
past the journal's retention (`[journal] retention_days`; the window when the journal is
off), and stale claims after `claim_timeout_s`, in batches every `purge_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import ConfirmTimeout, DedupUnavailable, DuplicateInFlight, MessageIdReused, StoreError
from gateway.intake.dedup.late import LateConfirms
from gateway.journal.model import Event, EventKind, JournalWriter
from gateway.journal.service import make_store
from gateway.journal.store import Arrival, Claimed, DedupStore, InFlight, Receipt, Seen
from gateway.journal.writer import NullWriter
from gateway.messages import QueuedMessage
from gateway.settings.model import Dedup, JournalSettings
from gateway.timeutil import Clock

log = logging.getLogger("swgw.dedup")


class Publish(Protocol):
    """`Broker.publish`: returns after the broker's ack, raises BrokerUnavailable otherwise.

    With `keep_waiting=True` a confirm timeout raises ConfirmTimeout whose `outcome` is the
    publish still awaiting the broker's answer; the Deduplicator then owns it.
    """

    def __call__(self, message: QueuedMessage, /, *, keep_waiting: bool = False) -> Awaitable[None]: ...


class Deduplicator:
    """Runs claim → publish → confirm/release around one publish, and purges on a timer.

    `store` is None for `backend = "none"`: every message is published, nothing recorded.
    `owns_store` (default True): start, purge and close the store here; create_app hands
    in the journal's store instead, which the journal starts, purges and closes.
    `on_store_error` is "reject" (503, nothing queued) or "accept" (publish unchecked).
    `purge_interval_s` is how often expired entries are deleted; they are ignored at once.
    `late_confirm_wait_s` (default 30) bounds how long a publish whose confirm timed out is
    still awaited in the background to settle its claim; `close()` cancels those waits.
    `on_error(operation)` counts store failures; `on_late(outcome)` counts how each of those
    background waits ended, one of LATE_OUTCOMES (gateway/intake/dedup/late.py).
    `journal` gets the `duplicate` and `conflict` events (posted); None: journal off.
    """

    def __init__(
        self,
        store: DedupStore | None,
        *,
        owns_store: bool = True,
        on_store_error: str = "reject",
        purge_interval_s: float = 3600.0,
        retry_after_s: int = 5,
        late_confirm_wait_s: float = 30.0,
        on_error: Callable[[str], None] = lambda operation: None,
        on_late: Callable[[str], None] = lambda outcome: None,
        journal: JournalWriter | None = None,
    ) -> None:
        self.store = store
        self.journal: JournalWriter = journal if journal is not None else NullWriter()
        self.owns_store = owns_store
        self.on_error = on_error  # counts store failures by operation (metrics)
        self.on_late = on_late  # counts late outcomes (metrics)
        self.on_store_error = on_store_error
        self.purge_interval_s = purge_interval_s
        self.retry_after_s = retry_after_s
        self._purger: asyncio.Task[None] | None = None
        self._late = LateConfirms(
            record=self._record,
            release=self._release,
            wait_s=late_confirm_wait_s,
            on_outcome=lambda outcome: self.on_late(outcome),  # looked up per call: on_late may be rewired
        )

    @classmethod
    def from_settings(
        cls,
        settings: Dedup,
        *,
        retry_after_s: int = 5,
        clock: Clock = time.time,
        on_error: Callable[[str], None] = lambda operation: None,
        on_late: Callable[[str], None] = lambda outcome: None,
        store: DedupStore | None = None,
        journal: JournalWriter | None = None,
    ) -> Deduplicator:
        """With `store` (the journal's, create_app), use it without owning it; without, make
        and own the store `settings.backend` names, journal off (tools, tests)."""
        owns = store is None
        if store is None:
            store = make_store(settings, JournalSettings(enabled=False), clock=clock)
        return cls(
            store,
            owns_store=owns,
            on_store_error=settings.on_store_error,
            purge_interval_s=settings.purge_interval_s,
            retry_after_s=retry_after_s,
            late_confirm_wait_s=settings.late_confirm_wait_s,
            on_error=on_error,
            on_late=on_late,
            journal=journal,
        )

    @property
    def unsettled(self) -> int:
        """Claims whose confirm timed out and whose late answer is still awaited."""
        return len(self._late)

    async def settled(self) -> None:
        """Return once every background wait started so far has ended (tests, drains)."""
        await self._late.settled()

    async def start(self) -> None:
        if self.store is None or not self.owns_store:
            return
        try:
            await self.store.start()
        except StoreError as exc:
            # A broken SQLite path is a set-up error worth failing start-up for.
            raise RuntimeError(f"dedup store cannot start: {exc}") from exc
        self._purger = asyncio.create_task(self._purge_loop(), name="dedup-purge")

    async def close(self) -> None:
        """Stop the purge timer and every background wait, then close the store.

        A wait cancelled here leaves its claim pending: the outcome is unknown, so the id is
        accepted again only once the claim is stale (`claim_timeout_s`).
        """
        await self._late.close()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        if self.store is not None and self.owns_store:
            await self.store.close()

    async def _purge_loop(self) -> None:
        assert self.store is not None
        while True:
            try:
                deleted = await self.store.purge()
                if deleted:
                    log.info("purged %d expired dedup entries", deleted, extra={"event": "dedup_purged"})
            except StoreError as exc:
                self.on_error("purge")
                log.warning("dedup purge failed: %s", exc, extra={"event": "dedup_purge_failed"})
            await asyncio.sleep(self.purge_interval_s)

    async def publish_once(self, message: QueuedMessage, publish: Publish) -> Receipt:
        """Publish `message` unless its (sender, id) was queued already; return the receipt to send.

        A returned receipt with `duplicate=True` was not published now. Raises the publish's
        own error (the claim released first, or, after a confirm timeout, kept and settled
        in the background), MessageIdReused, DuplicateInFlight or DedupUnavailable.
        """
        receipt = Receipt(message.message_id, message.destination, message.received_at)
        if self.store is None:
            await publish(message)
            return receipt
        arrival = Arrival.of(message, now=time.time())
        digest = arrival.sha256
        try:
            result = await self.store.claim(arrival)
        except StoreError as exc:
            self.on_error("claim")
            if self.on_store_error == "accept":
                log.warning(
                    "dedup store unavailable, queueing %s unchecked: %s",
                    message.message_id,
                    exc,
                    extra={"event": "dedup_skipped", "message_id": message.message_id},
                )
                await publish(message)
                return receipt
            raise DedupUnavailable(
                "The store of received message ids is unavailable, so duplicates cannot be ruled out; "
                "nothing was queued. Retry later with the same MessageId.",
                retry_after_s=self.retry_after_s,
            ) from exc
        if isinstance(result, Seen):
            first = result.receipt
            if result.digest is not None and result.digest != digest:
                self._journal(EventKind.CONFLICT, message, first, f"sha256 {digest} (accepted: {result.digest})")
                raise MessageIdReused(
                    f"MessageId {message.message_id!r} from {message.sender!r} was already used for different "
                    f"content: a message with that id was accepted at {first.received_at} (destination "
                    f"{first.destination!r}) and its body's SHA-256 differs from this one's. The first message "
                    "stands and this one was not queued; send a changed message under a new MessageId."
                )
            self._journal(EventKind.DUPLICATE, message, first, "")
            return first
        if isinstance(result, InFlight):
            raise DuplicateInFlight(
                f"A message with MessageId {message.message_id!r} from {message.sender!r} is being queued by "
                "another request right now (or the broker's answer to it is still awaited); retry in a moment "
                "to get its receipt.",
                retry_after_s=1,
            )
        try:
            await publish(message, keep_waiting=True)
        except ConfirmTimeout as exc:
            if exc.outcome is None:  # nothing left to wait for: the outcome stays unknown
                await asyncio.shield(self._release(result))
            else:
                self._late.start(result, receipt, exc.outcome)
            raise
        except BaseException:
            # Not confirmed → not seen. Shielded: a cancelled request must still let go.
            await asyncio.shield(self._release(result))
            raise
        await self._record(result, receipt)
        return receipt

    def _journal(self, kind: EventKind, message: QueuedMessage, first: Receipt, detail: str) -> None:
        """A re-send (200) or a reuse (409) of an accepted id; posted: the answer does not wait."""
        self.journal.post(
            Event(kind, time.time(), message.sender, message.message_id, first.destination, detail=detail)
        )

    async def _record(self, claim: Claimed, receipt: Receipt) -> bool:
        """Mark the claim queued after the broker's ack; False (logged, counted) if that failed."""
        assert self.store is not None
        try:
            owned = await self.store.confirm(claim, receipt)
        except StoreError as exc:
            self.on_error("confirm")
            owned, why = False, str(exc)
        else:
            why = "the claim went stale and was taken over"
        if not owned:
            # The broker has the message, so the partner gets its 202; only the memory of it
            # is missing, which at worst lets a later re-send through once more.
            log.warning(
                "queued %s but could not record it as seen: %s",
                claim.message_id,
                why,
                extra={"event": "dedup_confirm_failed", "message_id": claim.message_id},
            )
        return owned

    async def _release(self, claim: Claimed) -> bool:
        assert self.store is not None
        try:
            await self.store.release(claim)
        except StoreError as exc:
            self.on_error("release")
            log.warning(
                "could not release the dedup claim on %s (it expires after the claim timeout): %s",
                claim.message_id,
                exc,
                extra={"event": "dedup_release_failed", "message_id": claim.message_id},
            )
            return False
        return True
