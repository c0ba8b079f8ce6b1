"""Group commit for the PostgreSQL store: intake's claims and confirms go to the database in batches.

A claim and a confirm per message, each its own statement from the pool, cost the gateway
a pool checkout and a round trip each, and PostgreSQL an execution and a commit (a WAL
flush, ~2 ms on the bench machine) each: the gateway on PostgreSQL took 761 messages/s where
the one on SQLite (group commit) took 1,396 (issue 17). Here the calls that arrive in the
same event-loop tick, or while the previous batch is in flight, go as ONE statement
(`unnest` of an array per column), which is one transaction: all of them are written or
none is. One statement measured as cheap as `fetchmany` of the single-row statement in one
transaction (the commit dominates either way) and needs no second statement to say why a
claim lost.

`Batcher` keeps the calls in arrival order; one supervised task per batcher sends them.
What it keeps exact, per caller, as if the calls ran one after the other:
- each call gets its own result (or its own StoreError);
- a batch holds a (sender, message_id) once: a second call for the same message waits for
  the next batch, so it sees what the first one did (a statement cannot change a row twice);
- a failed statement wrote nothing, so every call in it gets the error, and no other call;
  unless the database refused a value (`isolate`): then each of its calls goes again alone,
  so a call the database refuses fails its own caller only, as it would have alone;
- a caller cancelled before its batch is sent is left out; one cancelled later does not
  disturb the others (its call is written, as a single statement sent before would be).

The statements themselves (`claim_sql`, `confirm_sql`) are here too; postgres.py runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Counter

from gateway.errors import StoreError
from gateway.supervise import spawn_supervised

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 500
"""Calls per statement at most: a burst after a pause goes in bounded statements."""


class Again:
    """What `run` returns for a call that must go again in the next batch (see postgres.py's claim)."""


AGAIN = Again()


class Batcher(Generic[T, R]):
    """Sends the calls queued so far as one `run(items)`, in a supervised task named `name`.

    `run` returns one result per item, in order, or raises (a StoreError for the database's
    failures) for the whole batch; AGAIN for an item puts its call first in the next batch.
    `key(item)` names the row a call touches; a batch holds each key once. `restarts` is
    `swgw_background_task_restarts_total`. At most `max_batch` (default MAX_BATCH) calls per
    batch; `close()` lets the queue drain for at most `close_timeout_s` (default 10), then
    fails what is left.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[T]], Awaitable[Sequence[R | Again]]],
        key: Callable[[T], Hashable],
        restarts: Counter,
        *,
        isolate: Callable[[StoreError], bool] = lambda exc: False,
        max_batch: int = MAX_BATCH,
        close_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self.close_timeout_s = close_timeout_s
        self._run = run
        self._key = key
        self._restarts = restarts
        self._isolate = isolate
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._alone: deque[tuple[T, asyncio.Future[R]]] = deque()  # to be sent one per statement, first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = spawn_supervised(self.name, self._loop, self._restarts)

    async def submit(self, item: T) -> R:
        """Queue `item` for the next batch and return its own result once the batch is written."""
        if self._closing:
            raise StoreError("postgres store is closed")
        if self._task is None:
            raise StoreError("postgres store is not started")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wake.set()
        return await future  # cancelled: the future is cancelled too, and _take() leaves the item out

    async def close(self) -> None:
        """Stop taking calls, send what is queued (bounded), then stop the task."""
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.close_timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for queue in (self._alone, self._queue):
            while queue:
                _fail(queue.popleft()[1], StoreError("postgres store is closed"))

    async def _loop(self) -> None:
        while True:
            if not self._queue and not self._alone:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                # Woken by the first call of a tick: let the tick's other callers in first, so
                # they share this statement instead of waiting for the next one.
                await asyncio.sleep(0)
                continue
            batch = self._take()
            if batch:
                await self._send(batch)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch, in arrival order: each key once; cancelled callers' calls left out."""
        while self._alone:
            call = self._alone.popleft()
            if not call[1].done():
                return [call]
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        while self._queue and len(batch) < self.max_batch:
            item, future = self._queue.popleft()
            if future.done():
                continue  # its caller was cancelled before the call was sent: nothing to undo
            key = self._key(item)
            if key in keys:
                later.append((item, future))  # after the call before it, as if one after the other
                continue
            keys.add(key)
            batch.append((item, future))
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except StoreError as exc:
            if len(batch) > 1 and self._isolate(exc):
                # One call's values the database refused, and the statement with them: nothing was
                # written. Each call goes again alone, so only that call's caller gets the error.
                self._alone.extend(batch)
                return
            for _, future in batch:  # one statement: none of the batch was written
                _fail(future, exc)
            return
        except asyncio.CancelledError:  # close() gave up waiting: whether it was written is unknown
            for _, future in batch:
                _fail(future, StoreError("postgres store closed during the call"))
            raise
        except Exception as exc:  # a bug: the callers still get an answer, supervise() logs and restarts
            for _, future in batch:
                _fail(future, StoreError(f"postgres batch failed: {exc!r}"))
            raise
        again: list[tuple[T, asyncio.Future[R]]] = []
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, Again):
                again.append(call)
            elif not call[1].done():  # done: its caller was cancelled meanwhile; the call was written
                call[1].set_result(result)
        self._queue.extendleft(reversed(again))


def _fail(future: asyncio.Future[R], exc: StoreError) -> None:
    """Each caller its own exception (one instance raised in many tasks would pile up their tracebacks)."""
    if not future.done():
        own = StoreError(*exc.args)
        own.__cause__ = exc.__cause__ if exc.__cause__ is not None else exc
        future.set_exception(own)


# -- the statements ------------------------------------------------------------------------------


def claim_sql(table: str) -> str:
    """Claims of a batch in one statement: $1..$10 arrays of the arrivals' columns, $11 now,
    $12 queued rows older than this are out of the window, $13 pending claims older than this are stale.

    Takes each free id, expired entry or stale claim, with the record's columns; a live row
    is left as it is. One row per arrival: `won`, and the row as it was when the statement
    began (its snapshot), which says why an arrival did not win.
    """
    t = table
    return (
        "WITH a AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::text[], $8::text[], $9::integer[], $10::timestamptz[]) AS a(sender, message_id, "
        "token, digest, destination, received_at, message_type, receiver, size, received)), "
        f'won AS (INSERT INTO "{t}" AS d (sender, message_id, state, token, at, digest, destination, '
        "received_at, message_type, receiver, size, received, status, attempts, updated_at) "
        "SELECT sender, message_id, 'pending', token, $11::timestamptz, digest, destination, received_at, "
        "message_type, receiver, size, received, 'received', 0, $11::timestamptz FROM a "
        "ON CONFLICT (sender, message_id) DO UPDATE SET state = 'pending', token = EXCLUDED.token, "
        "at = EXCLUDED.at, digest = EXCLUDED.digest, destination = EXCLUDED.destination, "
        "received_at = EXCLUDED.received_at, message_type = EXCLUDED.message_type, "
        "receiver = EXCLUDED.receiver, size = EXCLUDED.size, received = EXCLUDED.received, "
        "status = 'received', attempts = 0, delivered_at = NULL, parked_reason = NULL, "
        "updated_at = EXCLUDED.updated_at "
        "WHERE (d.state = 'queued' AND d.at < $12::timestamptz) OR (d.state = 'pending' AND d.at < $13::timestamptz) "
        "RETURNING d.sender, d.message_id) "
        "SELECT a.sender, a.message_id, won.sender IS NOT NULL AS won, d.state, d.at, d.digest, d.destination, "
        "d.received_at FROM a LEFT JOIN won ON won.sender = a.sender AND won.message_id = a.message_id "
        f'LEFT JOIN "{t}" d ON d.sender = a.sender AND d.message_id = a.message_id'
    )


def confirm_sql(table: str, events: str, *, journal: bool) -> str:
    """Confirms of a batch in one statement: $1..$7 arrays of sender, message_id, token, queued
    at, destination, received_at, updated at. Returns the confirmed (sender, message_id): a
    claim no longer ours (its token is gone) is not. With the journal on, each confirmed row's
    `queued` event is appended in the same statement, in the order of the calls.

    Delivery may have moved the status on already (it can consume before this runs): that
    status stays.
    """
    update = (
        "WITH c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], "
        "$6::text[], $7::timestamptz[]) WITH ORDINALITY AS c(sender, message_id, token, at, destination, "
        f"received_at, updated, n)), u AS (UPDATE \"{table}\" AS d SET state = 'queued', token = NULL, "
        "at = c.at, destination = c.destination, received_at = c.received_at, "
        "status = CASE WHEN d.status = 'received' THEN 'queued' ELSE d.status END, updated_at = c.updated "
        "FROM c WHERE d.sender = c.sender AND d.message_id = c.message_id AND d.token = c.token "
        "RETURNING d.sender, d.message_id, d.destination, d.at, c.n)"
    )
    if not journal:
        return update + " SELECT sender, message_id FROM u"
    return (
        f'{update}, e AS (INSERT INTO "{events}" (sender, message_id, at, kind, destination) '
        "SELECT sender, message_id, at, 'queued', destination FROM u ORDER BY n) "
        "SELECT sender, message_id FROM u"
    )
