"""Helpers for the journal store tests: a fake clock, arrivals, and a factory of stores on one table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from gateway.journal.postgres import PostgresStore
from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Arrival, Claimed, JournalStore, Receipt
from gateway.settings.model import Dedup, JournalSettings
from gateway.timeutil import iso_unix

DAY = 86_400.0
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Clock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def arrival(
    message_id: str = "M-1",
    digest: str = "d",
    *,
    sender: str = "VN-NSW",
    destination: str = "vnaccs",
    message_type: str = "CUSDEC",
    received: float = T0,
    size: int = 1234,
) -> Arrival:
    return Arrival(
        sender=sender,
        message_id=message_id,
        message_type=message_type,
        receiver="VN-VNACCS",
        destination=destination,
        size=size,
        sha256=digest,
        received_at=iso_unix(received) or "",
        received=received,
    )


def receipt_of(a: Arrival) -> Receipt:
    return Receipt(a.message_id, a.destination, a.received_at)


class Stores:
    """Makes stores of one kind on one file or table (several = several processes or replicas)."""

    def __init__(self, settings: Dedup, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.kind = settings.backend
        self.opened: list[JournalStore] = []

    def make(self, *, journal: JournalSettings | None = None, purge_batch: int = 1000, **dedup: object) -> JournalStore:
        settings = replace(self.settings, **dedup)  # type: ignore[arg-type]
        j = journal if journal is not None else JournalSettings()
        store: JournalStore
        if self.kind == "postgres":
            store = PostgresStore(settings, journal=j, clock=self.clock, purge_batch=purge_batch)
        else:
            store = SqliteStore(settings, journal=j, clock=self.clock, purge_batch=purge_batch)
        self.opened.append(store)
        return store

    async def started(self, **kw: object) -> JournalStore:
        store = self.make(**kw)  # type: ignore[arg-type]
        await store.start()
        return store

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


async def queued(store: JournalStore, a: Arrival) -> Claimed:
    """Claim and confirm `a`, as intake does for an accepted message."""
    claim = await store.claim(a)
    assert isinstance(claim, Claimed), claim
    assert await store.confirm(claim, receipt_of(a))
    return claim


async def until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    """Yield to the loop, one tick at a time, until another task made `predicate` true."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - set by plain code in another task, no event to wait on
            await asyncio.sleep(0)
