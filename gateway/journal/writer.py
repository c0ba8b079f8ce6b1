"""The batched journal writer: group commits, one per event-loop tick, never losing an event.

`record(event)` returns once the event is committed; `post(event)` queues it and returns at
once. Events queue in arrival order; one supervised background task commits everything
queued so far in one store transaction (`EventStore.write`), so a thousand deliveries
finishing in the same tick cost one commit, not a thousand. Calls that arrive while a
commit runs go together in the next one.

A failed commit is retried with capped, doubling backoff, the same events first and in the
same order, counted in `swgw_journal_write_errors_total` and logged; `record()` callers keep
waiting meanwhile, because delivery must not ack a message before its event is written
(a message then waits in RabbitMQ, unacked, until the journal is back). `close()` flushes
what is queued, within a bound; what is still unwritten after it is logged by count, and
its `record()` callers get a StoreError (their messages are not acked: redelivered later).

`NullWriter` is the writer of a gateway whose journal is off: every call returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from gateway.errors import StoreError
from gateway.journal.model import Event, EventStore
from gateway.observability.metrics import Metrics
from gateway.supervise import spawn_supervised
from gateway.timeutil import Clock, Sleep

log = logging.getLogger("swgw.journal")

MAX_BATCH = 1_000
"""Events per transaction at most: a backlog after an outage drains in bounded commits."""


class BatchWriter:
    """JournalWriter on an EventStore, with one group commit per event-loop tick.

    `max_batch` (default MAX_BATCH) bounds the events per commit. A failed commit is retried
    after `min_backoff_s` (0.05), doubling up to `max_backoff_s` (5). `close()` waits at most
    `close_timeout_s` (10) for the queue to drain. Metrics: `swgw_journal_write_seconds`,
    `swgw_journal_batch_events`, `swgw_journal_backlog_events`, `swgw_journal_write_errors_total`.
    """

    def __init__(
        self,
        store: EventStore,
        metrics: Metrics,
        *,
        max_batch: int = MAX_BATCH,
        min_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        close_timeout_s: float = 10.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_batch = max_batch
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.close_timeout_s = close_timeout_s
        self._sleep = sleep
        self._clock = clock
        # Pending events in order, with the future of the record() call waiting on each (None: posted).
        self._queue: deque[tuple[Event, asyncio.Future[None] | None]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    @property
    def backlog(self) -> int:
        """Events queued or being committed, not yet written."""
        return len(self._queue)

    async def start(self) -> None:
        if self._task is None:
            self._task = spawn_supervised("journal-writer", self._run, self.metrics.task_restarts)

    async def record(self, event: Event) -> None:
        """Return once `event` is committed. Raises StoreError only if the writer closed first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(event, future)
        await future  # cancelling the caller does not take the event back: it is still written

    def post(self, event: Event) -> None:
        """Queue `event` for the next commit and return at once."""
        self._enqueue(event, None)

    def _enqueue(self, event: Event, future: asyncio.Future[None] | None) -> None:
        if self._closed:
            self.metrics.journal_write_errors.inc()
            log.error(
                "journal event %s for %s arrived after the journal closed; it is not written",
                event.kind.value,
                event.message_id or event.destination,
                extra={"event": "journal_closed", "message_id": event.message_id},
            )
            if future is not None:
                future.set_exception(StoreError("the journal is closed"))
            return
        self._queue.append((event, future))
        self.metrics.journal_backlog.set(len(self._queue))
        self._wake.set()

    async def _run(self) -> None:
        """Commit batches until closing and drained. Any failure of a commit is retried here;
        anything else that escapes is supervise()'s to log and restart: the queue survives."""
        backoff = self.min_backoff_s
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                # Woken by the first event of a tick: let the tick's other callers in first, so
                # they share this commit instead of waiting for the next one.
                await asyncio.sleep(0)
                continue
            # Peek, not pop: the events leave the queue only once committed, so a failure keeps order.
            batch = [self._queue[i][0] for i in range(min(len(self._queue), self.max_batch))]
            started = self._clock()
            try:
                await self.store.write(batch)
            except Exception as exc:
                self.metrics.journal_write_errors.inc()
                log.warning(
                    "journal commit of %d events failed (%s); %d unwritten, retrying in %.2fs",
                    len(batch),
                    exc,
                    len(self._queue),
                    backoff,
                    extra={"event": "journal_write_failed", "backlog": len(self._queue)},
                    exc_info=not isinstance(exc, StoreError),  # a bug, not an outage: show where
                )
                await self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = self.min_backoff_s
            self.metrics.journal_write_seconds.observe(self._clock() - started)
            self.metrics.journal_batch_events.observe(len(batch))
            self._settle(len(batch), None)

    def _settle(self, n: int, error: BaseException | None) -> None:
        """Take the first `n` events off the queue and answer their waiters."""
        for _ in range(n):
            _, future = self._queue.popleft()
            if future is not None and not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        self.metrics.journal_backlog.set(len(self._queue))

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (drains, tests)."""
        if not self._queue:
            return
        event, future = self._queue[-1]  # queue order: its commit is the last of them all
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._queue[-1] = (event, future)
        await asyncio.shield(future)

    async def close(self) -> None:
        """Flush within `close_timeout_s`, then stop. Unwritten events are logged by count."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.close_timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._closed = True
        if self._queue:
            lost = len(self._queue)
            log.error(
                "the journal closed with %d events unwritten (the store kept failing); their messages "
                "were not acked by delivery and will be redelivered",
                lost,
                extra={"event": "journal_unwritten", "backlog": lost},
            )
            self._settle(lost, StoreError(f"the journal closed with {lost} events unwritten"))


class NullWriter:
    """The writer of a gateway whose journal is off: nothing is kept, nobody waits."""

    backlog = 0

    async def start(self) -> None:
        return None

    async def record(self, event: Event) -> None:
        return None

    def post(self, event: Event) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
