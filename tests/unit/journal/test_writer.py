"""The batched writer: group commits per tick, retries without losing or reordering, close() flushes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import StoreError
from gateway.journal.model import Event, EventKind, JournalWriter
from gateway.journal.sqlite import SqliteStore
from gateway.journal.writer import BatchWriter, NullWriter
from gateway.observability.metrics import Metrics
from gateway.settings.model import Dedup
from tests.unit.journal.stores import T0, arrival, queued, until


class FakeStore:
    """Records each committed batch; `failures` makes the next writes raise, `gate` holds them."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.calls = 0
        self.failures = 0
        self.gate: asyncio.Event | None = None

    async def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise StoreError("postgres: connection refused")
        self.batches.append(list(events))

    @property
    def written(self) -> list[Event]:
        return [e for batch in self.batches for e in batch]


class Sleeps:
    """A sleep that records the pause and only yields (no wall clock)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


def event(i: int) -> Event:
    return Event(EventKind.ATTEMPT, T0 + i, "VN-NSW", f"M-{i}", "vnaccs", status=200)


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def writer(store: FakeStore, metrics: Metrics) -> AsyncIterator[tuple[BatchWriter, Sleeps]]:
    sleeps = Sleeps()
    w = BatchWriter(store, metrics, sleep=sleeps, max_backoff_s=0.2, close_timeout_s=2)
    await w.start()
    yield w, sleeps
    await w.close()


async def test_everything_queued_in_one_tick_is_one_commit(
    writer: tuple[BatchWriter, Sleeps], store: FakeStore, metrics: Metrics
) -> None:
    w, _ = writer
    w.post(event(0))
    await asyncio.gather(*(w.record(event(i)) for i in range(1, 100)))
    assert store.calls == 1
    assert store.written == [event(i) for i in range(100)]
    assert sample(metrics, "swgw_journal_batch_events_count") == 1
    assert sample(metrics, "swgw_journal_batch_events_sum") == 100
    assert sample(metrics, "swgw_journal_write_seconds_count") == 1
    assert sample(metrics, "swgw_journal_backlog_events") == 0


async def test_events_arriving_during_a_commit_go_together_in_the_next(
    writer: tuple[BatchWriter, Sleeps], store: FakeStore
) -> None:
    w, _ = writer
    store.gate = asyncio.Event()
    first = asyncio.create_task(w.record(event(0)))
    await until(lambda: store.calls == 1)
    later = [asyncio.create_task(w.record(event(i))) for i in range(1, 50)]
    await asyncio.sleep(0)
    assert w.backlog == 50
    assert not first.done()  # record() returns only once committed
    store.gate.set()
    await asyncio.gather(first, *later)
    assert [len(b) for b in store.batches] == [1, 49]


async def test_a_failing_store_is_retried_with_capped_backoff_losing_and_reordering_nothing(
    writer: tuple[BatchWriter, Sleeps], store: FakeStore, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    w, sleeps = writer
    store.failures = 4
    with caplog.at_level(logging.WARNING, logger="swgw.journal"):
        waiting = [asyncio.create_task(w.record(event(i))) for i in range(10)]
        await until(lambda: store.calls >= 2)
        assert not any(t.done() for t in waiting)  # delivery must not ack before its event is written
        assert sample(metrics, "swgw_journal_backlog_events") == 10
        w.post(event(10))  # arrives during the outage: written after the others
        await asyncio.gather(*waiting)
    await w.flush()
    assert store.written == [event(i) for i in range(11)]
    assert sleeps.calls == [0.05, 0.1, 0.2, 0.2]  # doubling, capped at max_backoff_s
    assert sample(metrics, "swgw_journal_write_errors_total") == 4
    assert sample(metrics, "swgw_journal_backlog_events") == 0
    assert "journal commit of 10 events failed (postgres: connection refused)" in caplog.text


async def test_close_flushes_what_was_posted(store: FakeStore, metrics: Metrics) -> None:
    w = BatchWriter(store, metrics)
    await w.start()
    store.gate = asyncio.Event()
    for i in range(5):
        w.post(event(i))
    asyncio.get_running_loop().call_soon(store.gate.set)
    await w.close()
    assert store.written == [event(i) for i in range(5)]


async def test_close_gives_up_on_a_dead_store_within_its_bound_and_says_how_many_are_unwritten(
    store: FakeStore, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    store.failures = 10**9
    w = BatchWriter(store, metrics, sleep=Sleeps(), close_timeout_s=0.2)
    await w.start()
    waiting = asyncio.create_task(w.record(event(0)))
    w.post(event(1))
    with caplog.at_level(logging.ERROR, logger="swgw.journal"):
        await w.close()
    with pytest.raises(StoreError, match="2 events unwritten"):
        await waiting  # its message is not acked: RabbitMQ redelivers it
    assert "the journal closed with 2 events unwritten" in caplog.text
    errors = sample(metrics, "swgw_journal_write_errors_total")
    w.post(event(2))  # too late: counted and logged, never raised at the caller
    assert sample(metrics, "swgw_journal_write_errors_total") == errors + 1
    with pytest.raises(StoreError, match="closed"):
        await w.record(event(3))


async def test_the_writer_runs_supervised(writer: tuple[BatchWriter, Sleeps], metrics: Metrics) -> None:
    assert metrics.registry.get_sample_value("swgw_background_task_restarts_total", {"task": "journal-writer"}) == 0


async def test_many_concurrent_records_on_a_real_store_are_few_transactions(tmp_path: Path, metrics: Metrics) -> None:
    store = SqliteStore(Dedup(path=tmp_path / "j.sqlite3"))
    await store.start()
    for i in range(50):
        await queued(store, arrival(f"M-{i}"))
    w = BatchWriter(store, metrics)
    await w.start()
    try:
        await asyncio.gather(*(w.record(event(i % 50)) for i in range(500)))
        commits = sample(metrics, "swgw_journal_batch_events_count")
        assert sample(metrics, "swgw_journal_batch_events_sum") == 500
        assert 1 <= commits <= 3  # 500 deliveries finishing together: a handful of transactions
        record = await store.message("VN-NSW", "M-7")
        assert record is not None
        assert record.attempts == 10
    finally:
        await w.close()
        await store.close()


async def test_null_writer_is_a_writer_that_keeps_nothing() -> None:
    w: JournalWriter = NullWriter()
    await w.record(event(0))
    w.post(event(1))
