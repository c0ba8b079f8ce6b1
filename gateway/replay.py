"""Parked messages: list them without consuming, and move them back with filters, a rate and a dry run.

Replay publishes each selected message to its destination queue and waits for the broker's
confirm *before* acking it from parking, so a replay killed half-way loses nothing (at
worst a message is both re-queued and still parked, and the backend deduplicates it by its
unchanged message id). Non-matching messages are rotated: re-published (confirmed) to the
back of the parking queue, then acked. One pass over the N messages present at the start
therefore leaves the parking queue in its original relative order, and memory stays
bounded however large the parking queue is. Dry runs only browse: messages are read
without ack and returned when the channel closes.

Filters: `since`/`until` compare with the time the message was parked (ops replay "what
was parked during last night's outage"); `message_type`, `sender` and `message_id` match
exactly; `limit` caps how many are replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from gateway.broker import Broker
from gateway.circuit import RateLimiter, SlowStart
from gateway.errors import BrokerUnavailable
from gateway.messages import QueuedMessage
from gateway.metrics import Metrics

log = logging.getLogger("swgw.replay")
_WINDOW = 256  # confirmed publishes in flight at once


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"{value!r}: give a UTC offset, e.g. 2026-11-23T08:00:00+07:00 or ...Z")
    return ts


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
    def of(cls, msg: QueuedMessage) -> ParkedInfo:
        p = msg.parking
        return cls(
            msg.message_id,
            msg.message_type,
            msg.sender,
            p.reason if p else "unknown",
            p.status if p else None,
            p.excerpt if p else "",
            p.attempts if p else 0,
            p.parked_at if p else "",
        )


@dataclass
class ReplayReport:
    destination: str
    dry_run: bool
    scanned: int = 0
    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    selected: list[ParkedInfo] = field(default_factory=list)


def _check_destination(broker: Broker, destination: str) -> None:
    if destination not in {d.id for d in broker.settings.destinations}:
        raise KeyError(f"unknown destination {destination!r}")


@contextlib.asynccontextmanager
async def _parking(
    broker: Broker, destination: str, prefetch: int
) -> AsyncIterator[tuple[AbstractChannel, AsyncIterator[AbstractIncomingMessage], int]]:
    """Consume the parking queue; yields (channel, iterator, number of messages present at start)."""
    _check_destination(broker, destination)
    channel = await broker.new_channel(prefetch=prefetch)
    try:
        queue = await channel.declare_queue(broker.names.parking(destination), passive=True)
        count = queue.declaration_result.message_count or 0
        async with queue.iterator() as it:
            yield channel, it, count
    finally:
        with contextlib.suppress(Exception):
            await channel.close()  # returns every unacked message to parking, in order


async def browse(broker: Broker, destination: str, flt: ReplayFilter = ReplayFilter()) -> list[ParkedInfo]:
    """List parked messages (matching `flt`, up to its limit) without consuming any.

    Uses basic.get, which no prefetch window limits: every message stays unacked until the
    channel closes and the broker puts them all back, in order. Bodies are dropped as soon
    as their headers are read, so memory stays flat however many are parked.
    """
    _check_destination(broker, destination)
    out: list[ParkedInfo] = []
    channel = await broker.new_channel(prefetch=1)
    try:
        queue = await channel.declare_queue(broker.names.parking(destination), passive=True)
        count = queue.declaration_result.message_count or 0
        for _ in range(count):
            if flt.limit is not None and len(out) >= flt.limit:
                break
            raw = await queue.get(no_ack=False, fail=False)
            if raw is None:
                break
            msg = QueuedMessage.from_parts(raw.body, raw.headers or {})
            if flt.matches(msg):
                out.append(ParkedInfo.of(msg))
    finally:
        with contextlib.suppress(Exception):
            await channel.close()  # returns every message read to parking, in order
    return out


async def replay(
    broker: Broker,
    destination: str,
    flt: ReplayFilter = ReplayFilter(),
    *,
    rate_per_s: float | None = None,
    dry_run: bool = False,
    metrics: Metrics | None = None,
) -> ReplayReport:
    """Move matching parked messages back to the destination queue (see module docstring)."""
    report = ReplayReport(destination, dry_run)
    if dry_run:
        report.selected = await browse(broker, destination, flt)
        report.scanned = len(report.selected)
        if metrics:
            metrics.replayed.labels(destination, "dry_run").inc(len(report.selected))
        return report

    limiter = RateLimiter(SlowStart(max_rate_per_s=rate_per_s, max_concurrency=1, ramp_s=0)) if rate_per_s else None
    parking_queue = broker.names.parking(destination)
    window = asyncio.Semaphore(_WINDOW)
    failures: list[BaseException] = []

    async def move(raw: AbstractIncomingMessage, msg: QueuedMessage, back_to_parking: bool) -> None:
        try:
            if back_to_parking:
                await broker.publish_to_queue(parking_queue, _copy(raw))
            else:
                await broker.publish(msg.unparked())
            await raw.ack()  # only after the confirm
            if not back_to_parking:
                report.replayed += 1  # counted once confirmed, not when selected
        except Exception as exc:  # recorded, the message stays parked, and replay() raises below
            failures.append(exc)
            with contextlib.suppress(Exception):
                await raw.nack(requeue=True)
        finally:
            window.release()

    tasks: set[asyncio.Task[None]] = set()
    async with _parking(broker, destination, prefetch=_WINDOW * 2) as (_, it, count):
        while report.scanned < count and not failures:
            if flt.limit is not None and len(report.selected) >= flt.limit:
                break  # the rest stays where it is (unread messages return on channel close)
            raw = await anext(it)
            report.scanned += 1
            msg = QueuedMessage.from_parts(raw.body, raw.headers or {})
            selected = flt.matches(msg) and (flt.limit is None or len(report.selected) < flt.limit)
            if selected and limiter is not None:
                await limiter.acquire()
            await window.acquire()
            if selected:
                report.selected.append(ParkedInfo.of(msg))
            else:
                report.skipped += 1
            task = asyncio.create_task(move(raw, msg, back_to_parking=not selected))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    report.failed = len(failures)
    if metrics:
        metrics.replayed.labels(destination, "replayed").inc(report.replayed)
        metrics.replayed.labels(destination, "failed").inc(report.failed)
    log.info(
        "replay finished: %d replayed, %d left parked, %d failed",
        report.replayed,
        report.skipped,
        report.failed,
        extra={"event": "replay", "destination": destination, "count": report.replayed},
    )
    if failures:
        raise BrokerUnavailable(
            f"Replay stopped after {report.replayed} confirmed of {len(report.selected)} selected: {failures[0]}. "
            "Messages not confirmed stay parked; run the replay again.",
            retry_after_s=5,
        ) from failures[0]
    return report


def _copy(raw: AbstractIncomingMessage) -> aio_pika.Message:
    """The same bytes and headers, for rotating a non-matching message to the back of parking."""
    return aio_pika.Message(
        raw.body,
        headers=dict(raw.headers or {}),
        content_type=raw.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=raw.message_id,
        correlation_id=raw.correlation_id,
        type=raw.type,
        app_id=raw.app_id,
    )
