"""What a store of seen ids is: the DedupStore protocol and the values it answers with.

The policy (policy.py) talks to a store only through this protocol, and the stores
(sqlite.py, postgres.py) implement it with these types, so neither imports the other for
its types: policy.py imports the stores, the stores import only this module. A store keeps
one row per (sender, MessageId): a "pending" claim while its publish runs, then "queued"
with the receipt once the broker confirmed it. Entries expire `window_days` after their
receipt, claims go stale after `claim_timeout_s` (Limits); both are deleted in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.settings.model import Dedup
from gateway.timeutil import Clock

PURGE_BATCH = 10_000
"""Rows per DELETE when purging: keeps each purge transaction short."""


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
    """Where seen ids live. Every method raises StoreError when the store fails."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

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
