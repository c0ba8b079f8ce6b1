"""Duplicate elimination at intake: a re-sent MessageId gets its original receipt back.

Partners re-send when they are unsure (a timeout on their side, a retry after a 503, a
batch re-sent after a long outage). The key is (sender, MessageId); an entry lives for
`window_days` (default 7) after its receipt, then expires.

The protocol around one publish (`Deduplicator.publish_once`)::

    claim (sender, id) as "pending"  ──taken──▶ publish ──confirmed──▶ confirm: "queued" + receipt → 202
      │ already "queued" → 200, the original receipt, `duplicate: true` (nothing is published)
      │ "pending" (another request is publishing it right now) → 503 + Retry-After: 1
      └ publish failed → release: delete the claim, the 503 stands, the partner's retry is accepted

Honest guarantees:
- Two simultaneous posts of the same id: exactly one is published; the other gets a 503
  (`duplicate_in_flight`) and, on retry, the 200 duplicate receipt.
- A publish that is not confirmed is never recorded as seen. After a confirm *timeout* the
  broker may still have queued the message; the claim is released anyway, so the partner's
  retry is queued again and the backend sees the id twice (delivery is at-least-once and
  backends deduplicate by the X-Message-Id header).
- A gateway that dies between the broker's confirm and the store update (or whose store
  update fails) leaves a "pending" claim that nobody answered 202 for. After
  `claim_timeout_s` it is stale: the next post of that id takes it over and is queued
  again (one extra delivery, same id). `claim_timeout_s` must exceed the broker's
  confirm timeout, so a slow but live publish is never taken over.
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

This module holds the policy, the store Protocol and its value types; the stores are
`dedup_sqlite.py` and `dedup_postgres.py`.

Times come from the gateway's clock (`clock`, epoch seconds), so replicas' clocks should be
NTP-synchronised; skew only shifts expiry by the skew. Expired entries are ignored at once
(lazily) and deleted in batches every `purge_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import Dedup
from gateway.errors import IngressError
from gateway.messages import QueuedMessage

log = logging.getLogger("swgw.dedup")
Clock = Callable[[], float]
PURGE_BATCH = 10_000  # rows per DELETE: keeps each purge transaction short


class DuplicateInFlight(IngressError):
    """Another request holds the claim for this id and has not finished publishing it."""

    status = 503
    title = "Duplicate in flight"
    reason = "duplicate_in_flight"


class DedupUnavailable(IngressError):
    """The store of seen ids cannot be reached; nothing was queued."""

    status = 503
    title = "Duplicate check unavailable"
    reason = "dedup_unavailable"


class StoreError(Exception):
    """A store operation failed (database down, locked, timed out); the cause is chained."""


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
class Claimed:
    """This request owns (sender, message_id) and may publish; `token` proves ownership."""

    sender: str
    message_id: str
    token: str


@dataclass(frozen=True)
class Seen:
    """Already queued within the window. `digest` is the sha256 of the first body."""

    receipt: Receipt
    digest: str


@dataclass(frozen=True)
class InFlight:
    """Another request is publishing this id right now."""


ClaimResult = Claimed | Seen | InFlight


class DedupStore(Protocol):
    """Where seen ids live. Every method raises StoreError when the store fails."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def lookup(self, sender: str, message_id: str) -> Receipt | None:
        """The receipt of a queued, unexpired entry, else None."""
        ...

    async def claim(self, sender: str, message_id: str, digest: str) -> ClaimResult:
        """Atomically take (sender, id) as pending unless it is queued or freshly pending."""
        ...

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        """Mark our claim queued with its receipt; False if the claim is no longer ours."""
        ...

    async def release(self, claim: Claimed) -> None:
        """Delete our pending claim (publish failed), so a retry is accepted."""
        ...

    async def purge(self) -> int:
        """Delete expired entries and stale claims; returns how many rows went."""
        ...


class Limits:
    """Cut-off times shared by the SQL stores."""

    def __init__(self, settings: Dedup, clock: Clock) -> None:
        self.window_s = settings.window_days * 86_400.0
        self.claim_timeout_s = settings.claim_timeout_s
        self.clock = clock

    def cutoffs(self) -> tuple[float, float, float]:
        """(now, queued entries older than this expired, pending claims older than this stale)."""
        now = self.clock()
        return now, now - self.window_s, now - self.claim_timeout_s


# --- the policy around a publish ------------------------------------------------------------------


Publish = Callable[[QueuedMessage], Awaitable[None]]


class Deduplicator:
    """Runs claim → publish → confirm/release around one publish, and purges on a timer.

    `store` is None for `backend = "none"`: every message is published, nothing recorded.
    `on_store_error` is "reject" (503, nothing queued) or "accept" (publish unchecked).
    `purge_interval_s` is how often expired entries are deleted; they are ignored at once.
    """

    def __init__(
        self,
        store: DedupStore | None,
        *,
        on_store_error: str = "reject",
        purge_interval_s: float = 3600.0,
        retry_after_s: int = 5,
        on_error: Callable[[str], None] = lambda operation: None,
    ) -> None:
        self.store = store
        self.on_error = on_error  # counts store failures by operation (metrics)
        self.on_store_error = on_store_error
        self.purge_interval_s = purge_interval_s
        self.retry_after_s = retry_after_s
        self._purger: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Dedup,
        *,
        retry_after_s: int = 5,
        clock: Clock = time.time,
        on_error: Callable[[str], None] = lambda operation: None,
    ) -> Deduplicator:
        # Imported here, not at the top: the store modules import this one for their types,
        # and a gateway on SQLite (or a delivery-only process) never loads asyncpg.
        store: DedupStore | None
        if settings.backend == "postgres":
            from gateway.dedup_postgres import PostgresStore

            store = PostgresStore(settings, clock=clock)
        elif settings.backend == "sqlite":
            from gateway.dedup_sqlite import SqliteStore

            store = SqliteStore(settings, clock=clock)
        else:
            store = None
        return cls(
            store,
            on_store_error=settings.on_store_error,
            purge_interval_s=settings.purge_interval_s,
            retry_after_s=retry_after_s,
            on_error=on_error,
        )

    async def start(self) -> None:
        if self.store is None:
            return
        try:
            await self.store.start()
        except StoreError as exc:
            # A broken SQLite path is a set-up error worth failing start-up for.
            raise RuntimeError(f"dedup store cannot start: {exc}") from exc
        self._purger = asyncio.create_task(self._purge_loop(), name="dedup-purge")

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        if self.store is not None:
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
        own error (the claim released first), DuplicateInFlight or DedupUnavailable.
        """
        receipt = Receipt(message.message_id, message.destination, message.received_at)
        if self.store is None:
            await publish(message)
            return receipt
        digest = hashlib.sha256(message.body).hexdigest()
        try:
            result = await self.store.claim(message.sender, message.message_id, digest)
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
            if result.digest != digest:
                log.warning(
                    "MessageId %s re-sent by %s with different content; the first copy stands",
                    message.message_id,
                    message.sender,
                    extra={"event": "duplicate_conflict", "message_id": message.message_id},
                )
            return result.receipt
        if isinstance(result, InFlight):
            raise DuplicateInFlight(
                f"A message with MessageId {message.message_id!r} from {message.sender!r} is being queued by "
                "another request right now; retry in a moment to get its receipt.",
                retry_after_s=1,
            )
        try:
            await publish(message)
        except BaseException:
            # Not confirmed → not seen. Shielded: a cancelled request must still let go.
            await asyncio.shield(self._release(result))
            raise
        try:
            owned = await self.store.confirm(result, receipt)
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
                message.message_id,
                why,
                extra={"event": "dedup_confirm_failed", "message_id": message.message_id},
            )
        return receipt

    async def _release(self, claim: Claimed) -> None:
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
