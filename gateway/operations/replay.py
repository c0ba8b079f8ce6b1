"""Parked messages: list them, and move them back with filters, a rate, a time limit and a dry run.

How a replay reads a parking queue (`<prefix>.parked.<destination>`):
- **Its own connection.** Every replay, dry run and listing opens an AMQP connection of its
  own (not a robust one), sharing nothing with the gateway's connections: a lost connection
  ends it with an error instead of a silent resume.
- **One replay per destination.** Before reading, a replay declares the exclusive queue
  `<prefix>.replay-lock.<destination>` on that connection. A second replay's declare fails at
  once with RESOURCE_LOCKED: `ReplayInProgress`, nothing read (CLI exit 3, admin API 409). The
  broker deletes it when the owning connection ends (close, crash, SIGKILL, missed heartbeats).
- **A consumer, no rotation.** Messages are read in parking order by a consumer, in rounds of
  at most 1,024 (gateway/operations/parkread.py), at most as many as were parked when the
  replay started: nothing parked meanwhile is read. A selected message is published to the
  destination's exchange on a second channel with a publisher confirm and `mandatory`, and
  acked in parking only after the broker's confirm (and its round's end). Messages not
  selected are never acked nor re-published: the reader reads on to the end of what was
  parked at its start, cancels its consumer and gives them back itself, in read order (a
  quorum queue would shuffle them on a channel's close: gateway/operations/giveback.py).
  Nothing is ever written to parking.
- **A bound.** A replay stops selecting after the messages present at its start, after `limit`
  selections, or at `timeout_s` (default 600 s, at most 1,500 s: RabbitMQ closes a channel
  holding a delivery unacked for `consumer_timeout`, 30 minutes by default, basic.get's too).
  At the time limit it stops selecting, reads the rest through, waits for the confirms in
  flight and reports `timed_out`: the confirmed stay replayed, the rest parked.

A replay killed at any point loses nothing and duplicates nothing in parking: an unacked
message goes back to parking. At worst a message whose publish was confirmed but whose ack
never reached the broker is both queued and still parked; the backend drops the second copy
by its unchanged message id. The journal's `replayed` event is committed between the confirm
and the ack (`replay()`); a journal that cannot commit stops the replay like a broker.

A dry run reads like a replay and acks nothing. Listing (`browse`) reads with basic.get and
takes no lock (it changes nothing; while a replay holds messages, it shows the rest).

Filters: `since`/`until` compare with the time the message was parked (ops replay "what was
parked during last night's outage"); `message_type`, `sender`, `message_id` match exactly;
`limit` caps how many are selected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from gateway.broker.nodes import connect_first
from gateway.broker.topology import Names
from gateway.errors import BrokerUnavailable, ReplayInProgress, StoreError
from gateway.journal.model import Event, EventKind, JournalWriter
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.operations.giveback import BROKER_ERRORS, give_back, read_through
from gateway.operations.parkread import Parked, ParkReader
from gateway.operations.republish import broker_error, publish
from gateway.pacing import TokenBucket
from gateway.settings.model import Settings
from gateway.timeutil import Clock, parse_iso

log = logging.getLogger("swgw.replay")

DEFAULT_TIMEOUT_S = 600.0
MAX_TIMEOUT_S = 1500.0  # 25 min: below RabbitMQ's default consumer_timeout of 30 min
_WINDOW = 256  # confirmed publishes in flight at once


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    ts = parse_iso(value)
    if ts.tzinfo is None:
        raise ValueError(f"{value!r}: give a UTC offset, e.g. 2026-11-23T08:00:00+07:00 or ...Z")
    return ts


def check_timeout(timeout_s: float) -> float:
    """The replay time limit, checked: a number of seconds in (0, MAX_TIMEOUT_S]."""
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout_s: {timeout_s:g} must be > 0 and at most {MAX_TIMEOUT_S:g} seconds "
            "(RabbitMQ closes a channel that holds a message unacked for 30 minutes)"
        )
    return timeout_s


def lock_name(names: Names, destination: str) -> str:
    """The exclusive queue whose owner is the one replay of `destination` running now."""
    return f"{names.prefix}.replay-lock.{destination}"


@dataclass(frozen=True)
class ReplayFilter:
    since: datetime | None = None
    until: datetime | None = None
    message_type: str | None = None
    sender: str | None = None
    message_id: str | None = None
    limit: int | None = None

    def matches(self, msg: QueuedMessage) -> bool:
        if self.message_type is not None and msg.message_type != self.message_type:
            return False
        if self.sender is not None and msg.sender != self.sender:
            return False
        if self.message_id is not None and msg.message_id != self.message_id:
            return False
        if self.since is not None or self.until is not None:
            parked_at = parse_time(msg.parking.parked_at) if msg.parking and msg.parking.parked_at else None
            if parked_at is None:
                return False
            if self.since is not None and parked_at < self.since:
                return False
            if self.until is not None and parked_at > self.until:
                return False
        return True

    def describe(self) -> str:
        """The filter in words, for the journal: `message_type=CUSDEC limit=5`, or `all`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        words = [f"{k}={v.isoformat() if isinstance(v, datetime) else v}" for k, v in values.items() if v is not None]
        return " ".join(words) or "all"


def parked_reason(msg: QueuedMessage, headers: Mapping[str, Any]) -> str:
    """The gateway's parking reason; for a message RabbitMQ dead-lettered (quorum delivery limit),
    the reason of its latest x-death entry (`delivery_limit`), which carries no parking headers."""
    if msg.parking is not None and "x-swgw-parked-reason" in headers:
        return msg.parking.reason
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping) else {}
    reason = death.get("reason") or headers.get("x-first-death-reason")
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason) if reason else "unknown"


@dataclass
class ParkedInfo:
    message_id: str
    message_type: str
    sender: str
    reason: str
    status: int | None
    excerpt: str
    attempts: int
    parked_at: str

    @classmethod
    def of(cls, msg: QueuedMessage, headers: Mapping[str, Any]) -> ParkedInfo:
        p = msg.parking
        return cls(
            msg.message_id,
            msg.message_type,
            msg.sender,
            parked_reason(msg, headers),
            p.status if p else None,
            p.excerpt if p else "",
            p.attempts if p else 0,
            p.parked_at if p else "",
        )


@dataclass
class ReplayReport:
    """What one replay did. `present`: parked when it started; `unread`: of those, not read
    (limit or time limit reached, a failure, or held by a concurrent listing)."""

    destination: str
    dry_run: bool
    timeout_s: float = DEFAULT_TIMEOUT_S
    present: int = 0
    scanned: int = 0
    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    timed_out: bool = False
    selected: list[ParkedInfo] = field(default_factory=list)

    @property
    def unread(self) -> int:
        return max(self.present - self.scanned, 0)


def _check_destination(settings: Settings, destination: str) -> None:
    if destination not in {d.id for d in settings.destinations}:
        raise KeyError(f"unknown destination {destination!r}")


@contextlib.asynccontextmanager
async def _connection(settings: Settings, purpose: str) -> AsyncIterator[AbstractConnection]:
    """A plain (not robust) connection for one replay or listing, closed at the end whatever happens."""
    b = settings.broker
    try:  # a cluster: the first node that answers
        conn = await connect_first(b, {"connection_name": f"swgw {purpose} (pid {os.getpid()})"})
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"The message broker is not reachable ({exc or type(exc).__name__}); nothing was read or moved.",
            reason="broker_unavailable",
            retry_after_s=b.retry_after_s,
        ) from exc
    try:
        yield conn
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BrokerUnavailable(
            f"A queue or exchange is missing ({exc}); start the gateway once so it declares its topology.",
            reason="broker_topology",
            retry_after_s=b.retry_after_s,
        ) from exc
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"The broker connection failed ({exc or type(exc).__name__}); messages not confirmed stay parked.",
            reason="broker_unavailable",
            retry_after_s=b.retry_after_s,
        ) from exc
    finally:
        # Bounded: a blocked connection (resource alarm) cannot write its close; the broker
        # still returns every unacked message once the socket goes.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(b.confirm_timeout_s):
                await conn.close()


async def _parking(settings: Settings, channel: AbstractChannel, destination: str) -> tuple[AbstractQueue, int]:
    queue = await channel.declare_queue(Names(settings.broker.prefix).parking(destination), passive=True)
    return queue, queue.declaration_result.message_count or 0


async def _get(queue: AbstractQueue, settings: Settings) -> AbstractIncomingMessage | None:
    # A basic.get that gets no answer closes the channel (aiormq), returning every unacked
    # message to parking: the safe way out for a broker that stopped answering.
    return await queue.get(no_ack=False, fail=False, timeout=max(settings.broker.confirm_timeout_s, 5.0))


async def browse(settings: Settings, destination: str, flt: ReplayFilter = ReplayFilter()) -> list[ParkedInfo]:
    """List parked messages (matching `flt`, up to its limit) without consuming any.

    basic.get, which no prefetch window limits and which registers no consumer: every
    message read is held and then given back in order; at the filter's limit it reads the
    rest through (module docstring). Bodies are dropped once their headers are read.
    """
    _check_destination(settings, destination)
    out: list[ParkedInfo] = []
    async with _connection(settings, f"parked list {destination}") as conn:
        channel = await conn.channel()
        queue, count = await _parking(settings, channel, destination)
        held: list[int] = []
        for read in range(count):
            if flt.limit is not None and len(out) >= flt.limit:
                await read_through(lambda: _get(queue, settings), count - read, held, destination)
                break
            raw = await _get(queue, settings)
            if raw is None:
                break
            held.append(raw.delivery_tag or 0)
            msg = QueuedMessage.from_parts(raw.body, raw.headers or {})
            if flt.matches(msg):
                out.append(ParkedInfo.of(msg, raw.headers or {}))
        await give_back(channel, queue.name, held, settings.broker.confirm_timeout_s)
        await channel.close()
    return out


async def _lock(settings: Settings, channel: AbstractChannel, destination: str) -> None:
    name = lock_name(Names(settings.broker.prefix), destination)
    try:
        # Exclusive: owned by this connection, deleted by the broker when it ends. Classic,
        # whatever the vhost's default queue type (an exclusive queue cannot be quorum).
        await channel.declare_queue(name, exclusive=True, durable=False, arguments={"x-queue-type": "classic"})
    except aiormq.exceptions.ChannelLockedResource as exc:
        log.warning(
            "replay of %s refused: another replay holds %s",
            destination,
            name,
            extra={"event": "replay_refused", "destination": destination},
        )
        raise ReplayInProgress(destination, name) from exc


async def replay(
    settings: Settings,
    destination: str,
    flt: ReplayFilter = ReplayFilter(),
    *,
    rate_per_s: float | None = None,
    dry_run: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    metrics: Metrics | None = None,
    clock: Clock = time.monotonic,
    journal: JournalWriter | None = None,
    action: str = "replay",
    progress: Callable[[int, int], None] = lambda read, present: None,
) -> ReplayReport:
    """Move matching parked messages back to the destination queue (see module docstring).
    `journal`: a `replayed` event per message (detail: `action`, the filter) between confirm and ack.

    Raises ReplayInProgress at once if another replay of `destination` runs anywhere,
    BrokerUnavailable if the broker cannot be reached or a publish failed (the report's
    counts are in the message), KeyError for an unknown destination, ValueError for a
    `timeout_s` out of range. `clock` (monotonic seconds) is for tests; `progress(read, parked)` per message read.
    """
    _check_destination(settings, destination)
    check_timeout(timeout_s)
    deadline = clock() + timeout_s
    report = ReplayReport(destination, dry_run, timeout_s)
    names = Names(settings.broker.prefix)
    limiter = TokenBucket(rate_per_s) if rate_per_s else None  # --rate: at most a tenth of a second in a burst
    window = asyncio.Semaphore(_WINDOW)
    failures: list[BaseException] = []
    bound_s = settings.broker.confirm_timeout_s
    detail = f"{action}; filter: {flt.describe()}"

    async def move(channel: aiormq.abc.AbstractChannel, raw: Parked, msg: QueuedMessage) -> None:
        # Timed before the publish: its redelivery's first attempt can never sort before it.
        event = Event(EventKind.REPLAYED, time.time(), msg.sender, msg.message_id, destination, detail=detail)
        try:
            await publish(channel, names.exchange, destination, msg, bound_s=bound_s)  # confirmed, mandatory
            report.replayed += 1  # counted once confirmed
            if journal is not None:
                try:
                    async with asyncio.timeout(bound_s):
                        await journal.record(event)
                except (TimeoutError, StoreError) as exc:  # that message is then queued and still parked
                    raise StoreError(f"the journal did not commit a replayed event within {bound_s:g}s") from exc
            await parked.ack(raw)  # only after the confirm (bounded); unacked, it goes back to parking
        except Exception as exc:  # recorded; the message stays parked, and replay() raises below
            failures.append(broker_error(exc, settings, destination))
        finally:
            window.release()

    async with _connection(settings, f"replay {destination}") as conn:
        reader = await conn.channel()
        await _lock(settings, reader, destination)
        queue, report.present = await _parking(settings, reader, destination)
        parked = ParkReader(reader, queue.name, report.present, bound_s=bound_s, destination=destination)
        publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
        underlay = await publisher.get_underlay_channel()  # on_return_raises: a Basic.Return raises
        log.info(
            "replay started: %d parked, %s",
            report.present,
            "dry run" if dry_run else f"time limit {timeout_s:g}s",
            extra={"event": "replay_started", "destination": destination, "count": report.present},
        )
        tasks: set[asyncio.Task[None]] = set()
        try:
            while report.scanned < report.present and not failures:
                if flt.limit is not None and len(report.selected) >= flt.limit:
                    break  # the rest is read through below, never selected: it stays where it is
                if clock() >= deadline:
                    report.timed_out = True
                    break
                try:
                    raw = await parked.next()
                except BROKER_ERRORS as exc:
                    failures.append(broker_error(exc, settings, destination))
                    break
                if raw is None:
                    break  # fewer than at the start (a listing holds some): nothing to wait for
                report.scanned += 1
                progress(report.scanned, report.present)
                msg = QueuedMessage.from_parts(raw.body, raw.headers or {})
                if not flt.matches(msg):
                    report.skipped += 1
                    continue  # never acked: given back to parking, in place, below
                report.selected.append(ParkedInfo.of(msg, raw.headers or {}))
                if dry_run:
                    continue
                if limiter is not None:
                    await limiter.acquire()
                await window.acquire()
                task = asyncio.create_task(move(underlay, raw, msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if not failures:  # to the end of what was parked at the start (module docstring)
                await parked.read_through(report.present - report.scanned)
        finally:
            await parked.stop()  # the acks of the last round go out; nothing more is delivered
            if tasks:  # each is bounded by the confirm timeout; cancelling would only lose acks
                await asyncio.gather(*tasks, return_exceptions=True)
            await parked.give_back()  # after the acks; back in order before the lock is released
            with contextlib.suppress(Exception):
                async with asyncio.timeout(bound_s):
                    await reader.close()
    failures += [broker_error(parked.failure, settings, destination)] if parked.failure and not failures else []
    return _finish(report, failures, metrics)


def _finish(report: ReplayReport, failures: list[BaseException], metrics: Metrics | None) -> ReplayReport:
    dest = report.destination
    report.failed = len(report.selected) - report.replayed if failures and not report.dry_run else 0
    if metrics:
        if report.dry_run:
            metrics.replayed.labels(dest, "dry_run").inc(len(report.selected))
        else:
            metrics.replayed.labels(dest, "replayed").inc(report.replayed)
            metrics.replayed.labels(dest, "failed").inc(report.failed)
    left = report.present - report.replayed
    log.info(
        "replay %s: %d %s of %d parked, %d left parked, %d failed%s",
        "stopped at the time limit" if report.timed_out else "finished",
        len(report.selected) if report.dry_run else report.replayed,
        "would be replayed" if report.dry_run else "replayed",
        report.present,
        left,
        report.failed,
        f" ({report.timeout_s:g}s); run it again to continue" if report.timed_out else "",
        extra={"event": "replay", "destination": dest, "count": report.replayed},
    )
    if failures:
        raise BrokerUnavailable(
            f"Replay of {dest!r} stopped after {report.replayed} confirmed of {len(report.selected)} selected: "
            f"{failures[0]}. Messages not confirmed stay parked; run the replay again.",
            reason="broker_unavailable",
            retry_after_s=5,
        ) from failures[0]
    return report
