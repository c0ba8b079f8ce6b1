"""One process's journal: its store (also intake's store of seen ids), writer, reader and retention.

create_app builds one `Journal` and starts it before anything that journals, and closes it
after them: the writer flushes, the retention task stops, the store closes. The dedup
policy gets `journal.store` (it never starts or closes a store it was handed); intake,
delivery and operations get `journal.writer`; the read side gets `journal.reader`.

    [dedup] backend    [journal] enabled    store        writer        reader
    sqlite/postgres    true (default)       yes          BatchWriter   the store
    sqlite/postgres    false                yes (dedup)  NullWriter    None
    none               (off)                None         NullWriter    None
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter

from gateway.errors import StoreError
from gateway.journal.model import JournalReader
from gateway.journal.store import JournalStore
from gateway.journal.writer import BatchWriter, NullWriter
from gateway.observability.metrics import Metrics
from gateway.settings.model import Dedup, JournalSettings, Settings
from gateway.supervise import spawn_supervised
from gateway.timeutil import Clock

log = logging.getLogger("swgw.journal")


def make_store(
    dedup: Dedup, journal: JournalSettings, *, clock: Clock = time.time, restarts: Counter | None = None
) -> JournalStore | None:
    """The store `[dedup] backend` names (None for "none"); not started. `restarts` counts the
    restarts of its background tasks (PostgreSQL's batching; a counter of its own when None)."""
    if dedup.backend == "postgres":
        from gateway.journal.postgres import PostgresStore  # asyncpg only when PostgreSQL is used

        return PostgresStore(dedup, journal=journal, clock=clock, restarts=restarts)
    if dedup.backend == "sqlite":
        from gateway.journal.sqlite import SqliteStore

        return SqliteStore(dedup, journal=journal, clock=clock)
    return None


def describe(settings: Settings) -> str:
    """One line for check-config: is the journal on, where, and for how long."""
    dedup, journal = settings.dedup, settings.journal
    if dedup.backend == "none":
        return 'journal: off ([dedup] backend = "none": the journal lives in the dedup store; pick sqlite or postgres)'
    if not journal.enabled:
        kept = f"{dedup.window_days:g} days"
        return f"journal: off ([journal] enabled = false; {dedup.backend} keeps seen ids for {kept})"
    where = str(dedup.path) if dedup.backend == "sqlite" else "postgresql"
    return (
        f"journal: on ({dedup.backend} {where}, table {dedup.table}; records and events kept "
        f"{journal.retention_days:g} days, duplicates within {dedup.window_days:g} days)"
    )


class Journal:
    """The store, writer and reader of one process, and the retention task that purges every
    `purge_interval_s` (`[dedup] purge_interval_s`): stale claims, then records and events
    past retention, in batches that never block intake. `writer` is a NullWriter and
    `reader` None when the journal is off; `store` is None without a store at all."""

    def __init__(
        self,
        store: JournalStore | None,
        metrics: Metrics,
        *,
        enabled: bool = True,
        purge_interval_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.purge_interval_s = purge_interval_s
        self.writer: BatchWriter | NullWriter = NullWriter()
        self.reader: JournalReader | None = None
        if store is not None and enabled:
            self.writer = BatchWriter(store, metrics)
            self.reader = store
        self._purger: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics, *, clock: Clock = time.time) -> Journal:
        return cls(
            make_store(settings.dedup, settings.journal, clock=clock, restarts=metrics.task_restarts),
            metrics,
            enabled=settings.journal.enabled,
            purge_interval_s=settings.dedup.purge_interval_s,
        )

    @property
    def enabled(self) -> bool:
        return self.reader is not None

    async def start(self) -> None:
        if self.store is None:
            return
        try:
            await self.store.start()
        except StoreError as exc:
            # A broken SQLite path is a set-up error worth failing start-up for.
            raise RuntimeError(f"journal store cannot start: {exc}") from exc
        await self.writer.start()
        self._purger = spawn_supervised("journal-retention", self._purge_loop, self.metrics.task_restarts)

    async def close(self) -> None:
        """Flush the writer (bounded), stop retention, close the store."""
        await self.writer.close()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self.store is not None:
            await self.store.close()

    async def purge_once(self) -> int:
        """One retention pass; store failures are logged and counted, never raised."""
        assert self.store is not None
        try:
            deleted = await self.store.purge()
        except StoreError as exc:
            self.metrics.dedup_store_errors.labels("purge").inc()
            log.warning("journal purge failed: %s", exc, extra={"event": "journal_purge_failed"})
            return 0
        if deleted:
            log.info("purged %d stale claims and records past retention", deleted, extra={"event": "journal_purged"})
        return deleted

    async def _purge_loop(self) -> None:
        while True:
            await self.purge_once()
            await asyncio.sleep(self.purge_interval_s)
