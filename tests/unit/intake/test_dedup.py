"""The claim/publish/confirm policy around the journal's store of seen ids.

The stores themselves (SQLite and PostgreSQL, same tests): tests/unit/journal/test_store.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import (
    BrokerUnavailable,
    ConfigError,
    ConfirmTimeout,
    DedupUnavailable,
    DuplicateInFlight,
    MessageIdReused,
    StoreError,
)
from gateway.intake.dedup.late import LATE_OUTCOMES
from gateway.intake.dedup.policy import Deduplicator
from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Arrival, Claimed, InFlight, Receipt, Seen
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.load import load_settings
from gateway.settings.model import Dedup
from tests.helpers import config_doc, to_toml


class Clock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


# --- the policy: Deduplicator.publish_once ----------------------------------------------------


def message(message_id: str = "M-1", body: bytes = b"<x/>") -> QueuedMessage:
    return QueuedMessage(
        message_id=message_id,
        correlation_id=None,
        message_type="CUSDEC",
        sender="VN-NSW",
        receiver="VN-VNACCS",
        destination="vnaccs",
        received_at="2026-11-23T01:00:00.000Z",
        body=body,
    )


class Broker:
    """Records publishes; `fail` makes the next publishes raise like an unconfirmed publish.

    `time_out` makes the next publish behave like gateway.broker.publisher.Broker.publish when no
    confirm comes within confirm_timeout_s: with keep_waiting it raises ConfirmTimeout
    carrying the still-pending outcome, which ends when the test resolves `late`
    (set_result(None) = late ack, set_exception(...) = late nack, return or lost connection).
    """

    def __init__(self) -> None:
        self.published: list[str] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.time_out = False
        self.late: asyncio.Future[None] | None = None
        self.outcome: asyncio.Task[None] | None = None

    async def publish(self, m: QueuedMessage, *, keep_waiting: bool = False) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if self.time_out:
            self.time_out = False
            self.late = asyncio.get_running_loop().create_future()
            self.outcome = asyncio.create_task(self._late_answer(m, self.late)) if keep_waiting else None
            raise ConfirmTimeout("no confirm within 5s", retry_after_s=2, outcome=self.outcome)
        self.published.append(m.message_id)

    async def _late_answer(self, m: QueuedMessage, late: asyncio.Future[None]) -> None:
        await late
        self.published.append(m.message_id)


@pytest.fixture
async def dedup(tmp_path: Path) -> AsyncIterator[Deduplicator]:
    d = Deduplicator(SqliteStore(Dedup(path=tmp_path / "seen.sqlite3")))
    await d.start()
    yield d
    await d.close()


async def test_a_resend_returns_the_original_receipt_and_is_not_published(dedup: Deduplicator) -> None:
    broker = Broker()
    first = await dedup.publish_once(message(), broker.publish)
    assert not first.duplicate
    resend = replace(message(), received_at="2026-11-24T00:00:00.000Z", destination="elsewhere")
    second = await dedup.publish_once(resend, broker.publish)
    assert second.duplicate
    assert (second.received_at, second.destination) == (first.received_at, first.destination)
    assert second.as_json() == {**first.as_json(), "duplicate": True}
    assert broker.published == ["M-1"]


async def test_an_unconfirmed_publish_is_not_recorded_so_the_retry_is_queued(dedup: Deduplicator) -> None:
    broker = Broker()
    broker.fail = BrokerUnavailable("no confirm", retry_after_s=1)
    with pytest.raises(BrokerUnavailable):
        await dedup.publish_once(message(), broker.publish)
    broker.fail = None
    receipt = await dedup.publish_once(message(), broker.publish)
    assert not receipt.duplicate
    assert broker.published == ["M-1"]


async def test_a_cancelled_publish_releases_its_claim(dedup: Deduplicator) -> None:
    broker = Broker()
    broker.gate = asyncio.Event()
    task = asyncio.create_task(dedup.publish_once(message(), broker.publish))
    await broker.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    broker.gate = None
    assert not (await dedup.publish_once(message(), broker.publish)).duplicate
    assert broker.published == ["M-1"]


async def test_a_concurrent_duplicate_gets_503_retry_later_then_the_receipt(dedup: Deduplicator) -> None:
    broker = Broker()
    broker.gate = asyncio.Event()
    first = asyncio.create_task(dedup.publish_once(message(), broker.publish))
    await broker.entered.wait()
    with pytest.raises(DuplicateInFlight) as caught:
        await dedup.publish_once(message(), broker.publish)
    assert caught.value.status == 503
    assert caught.value.retry_after_s == 1
    broker.gate.set()
    await first
    assert (await dedup.publish_once(message(), broker.publish)).duplicate
    assert broker.published == ["M-1"]


async def test_different_content_under_an_accepted_id_is_409_and_the_same_body_still_the_duplicate(
    dedup: Deduplicator,
) -> None:
    broker = Broker()
    first = await dedup.publish_once(message(body=b"<a/>"), broker.publish)
    with pytest.raises(MessageIdReused) as caught:
        await dedup.publish_once(message(body=b"<b/>"), broker.publish)
    assert (caught.value.status, caught.value.reason) == (409, "message_id_reused")
    assert caught.value.problem_type == "urn:swgw:problem:message_id_reused"
    assert "MessageId 'M-1' from 'VN-NSW' was already used for different content" in caught.value.detail
    assert first.received_at in caught.value.detail
    with pytest.raises(MessageIdReused):  # one byte more is another body: the exact bytes are compared
        await dedup.publish_once(message(body=b"<a/>\n"), broker.publish)
    again = await dedup.publish_once(message(body=b"<a/>"), broker.publish)
    assert again == replace(first, duplicate=True)
    assert broker.published == ["M-1"]


async def test_concurrent_posts_of_one_id_with_different_bodies_never_both_publish(dedup: Deduplicator) -> None:
    broker = Broker()
    broker.gate = asyncio.Event()
    first = asyncio.create_task(dedup.publish_once(message(body=b"<a/>"), broker.publish))
    await broker.entered.wait()
    with pytest.raises(DuplicateInFlight):
        await dedup.publish_once(message(body=b"<b/>"), broker.publish)
    broker.gate.set()
    assert not (await first).duplicate
    with pytest.raises(MessageIdReused):
        await dedup.publish_once(message(body=b"<b/>"), broker.publish)
    assert broker.published == ["M-1"]


def _old_sqlite_table(path: Path, table: str, rows: list[tuple[str, str, str, float, str, str]]) -> None:
    """The table as a gateway from before body digests wrote it: no digest column."""
    db = sqlite3.connect(path)
    with db:
        db.execute(
            f'CREATE TABLE "{table}" (sender TEXT NOT NULL, message_id TEXT NOT NULL, state TEXT NOT NULL, '
            "token TEXT, at REAL NOT NULL, destination TEXT, received_at TEXT, PRIMARY KEY (sender, message_id))"
        )
        db.executemany(f'INSERT INTO "{table}" VALUES (?, ?, ?, NULL, ?, ?, ?)', [(*r[:5], r[5]) for r in rows])
    db.close()


async def test_an_entry_without_a_digest_answers_200_duplicate_never_409(tmp_path: Path) -> None:
    settings = Dedup(path=tmp_path / "old.sqlite3", table="old_dedup")
    _old_sqlite_table(
        settings.path, settings.table, [("VN-NSW", "M-1", "queued", 4e9, "vnaccs", "2026-11-20T00:00:00Z")]
    )
    d = Deduplicator(SqliteStore(settings, clock=lambda: 4e9))
    await d.start()
    try:
        broker = Broker()
        receipt = await d.publish_once(message(body=b"<anything/>"), broker.publish)
        assert (receipt.duplicate, receipt.received_at) == (True, "2026-11-20T00:00:00Z")
        assert broker.published == []
    finally:
        await d.close()


# --- after a confirm timeout: the claim is kept until the broker's late answer settles it --------


class Outcomes:
    """Collects on_late calls; `wait(n)` returns once n background waits have ended (no sleeps)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, outcome: str) -> None:
        self.seen.append(outcome)
        self._changed.set()

    async def wait(self, n: int = 1) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.seen) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.seen


@pytest.fixture
async def late(tmp_path: Path) -> AsyncIterator[tuple[Deduplicator, Outcomes, Clock]]:
    clock = Clock()
    outcomes = Outcomes()
    d = Deduplicator(SqliteStore(Dedup(path=tmp_path / "seen.sqlite3"), clock=clock), on_late=outcomes)
    await d.start()
    yield d, outcomes, clock
    await d.close()


async def _timed_out(d: Deduplicator, broker: Broker) -> None:
    broker.time_out = True
    with pytest.raises(ConfirmTimeout):
        await d.publish_once(message(), broker.publish)


async def test_a_late_ack_after_a_confirm_timeout_records_the_id_so_the_retry_gets_the_receipt(
    late: tuple[Deduplicator, Outcomes, Clock],
) -> None:
    d, outcomes, _ = late
    broker = Broker()
    await _timed_out(d, broker)
    assert d.unsettled == 1
    with pytest.raises(DuplicateInFlight) as caught:  # outcome unknown: the claim is kept
        await d.publish_once(message(), broker.publish)
    assert caught.value.retry_after_s == 1
    assert broker.late is not None
    broker.late.set_result(None)  # the broker's ack arrives after the partner got its 503
    assert await outcomes.wait() == ["queued"]
    receipt = await d.publish_once(replace(message(), received_at="2026-11-24T00:00:00.000Z"), broker.publish)
    assert receipt == Receipt("M-1", "vnaccs", message().received_at, duplicate=True)  # the first post's receipt
    assert broker.published == ["M-1"]  # queued once
    await d.settled()
    assert d.unsettled == 0


@pytest.mark.parametrize(
    "answer",
    [
        BrokerUnavailable("nack", reason="broker_nack", retry_after_s=2),
        BrokerUnavailable("returned", reason="broker_unroutable", retry_after_s=2),
        BrokerUnavailable("connection lost", reason="broker_unavailable", retry_after_s=2),
    ],
)
async def test_a_late_nack_return_or_lost_connection_releases_the_claim_so_the_retry_is_accepted(
    late: tuple[Deduplicator, Outcomes, Clock], answer: BrokerUnavailable
) -> None:
    d, outcomes, _ = late
    broker = Broker()
    await _timed_out(d, broker)
    assert broker.late is not None
    broker.late.set_exception(answer)
    assert await outcomes.wait() == ["released"]
    assert not (await d.publish_once(message(), broker.publish)).duplicate
    assert broker.published == ["M-1"]


async def test_no_late_answer_within_the_bound_gives_up_waiting_and_the_claim_goes_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    outcomes = Outcomes()
    store = SqliteStore(Dedup(path=tmp_path / "seen.sqlite3", claim_timeout_s=60), clock=clock)
    d = Deduplicator(store, late_confirm_wait_s=0.0, on_late=outcomes)  # the bound is reached at once
    await d.start()
    try:
        broker = Broker()
        with caplog.at_level(logging.WARNING, logger="swgw.dedup"):
            await _timed_out(d, broker)
            assert await outcomes.wait() == ["expired"]
        assert "no answer from the broker for M-1" in caplog.text
        assert broker.outcome is not None
        assert broker.outcome.cancelled()  # the publish is not left running: no orphan task
        await d.settled()
        assert d.unsettled == 0
        with pytest.raises(DuplicateInFlight):  # still unknown: the claim stays until it is stale
            await d.publish_once(message(), broker.publish)
        clock.now += 61
        assert not (await d.publish_once(message(), broker.publish)).duplicate  # taken over
    finally:
        await d.close()


async def test_close_cancels_the_background_waits_and_counts_them(late: tuple[Deduplicator, Outcomes, Clock]) -> None:
    d, outcomes, _ = late
    broker = Broker()
    await _timed_out(d, broker)
    await d.close()
    assert outcomes.seen == ["cancelled"]
    assert d.unsettled == 0
    assert broker.outcome is not None
    assert broker.outcome.cancelled()


async def test_an_unexpected_late_answer_is_logged_counted_and_leaves_the_claim_pending(
    late: tuple[Deduplicator, Outcomes, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    d, outcomes, _ = late
    broker = Broker()
    await _timed_out(d, broker)
    assert broker.late is not None
    with caplog.at_level(logging.ERROR, logger="swgw.dedup"):
        broker.late.set_exception(RuntimeError("unexpected frame"))
        assert await outcomes.wait() == ["error"]
    assert "settling the claim on M-1 after a confirm timeout failed" in caplog.text
    assert "RuntimeError: unexpected frame" in caplog.text  # with its traceback, not swallowed
    with pytest.raises(DuplicateInFlight):
        await d.publish_once(message(), broker.publish)


async def test_a_store_failure_when_recording_a_late_ack_is_counted(tmp_path: Path) -> None:
    class RecordFails(SqliteStore):
        async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
            raise StoreError("disk full")

    errors: list[str] = []
    outcomes = Outcomes()
    d = Deduplicator(RecordFails(Dedup(path=tmp_path / "x.sqlite3")), on_error=errors.append, on_late=outcomes)
    await d.start()
    try:
        broker = Broker()
        await _timed_out(d, broker)
        assert broker.late is not None
        broker.late.set_result(None)
        assert await outcomes.wait() == ["error"]
        assert errors == ["confirm"]
    finally:
        await d.close()


async def test_a_timeout_without_an_outcome_to_wait_for_releases_the_claim(dedup: Deduplicator) -> None:
    broker = Broker()
    broker.time_out = True

    async def publish(m: QueuedMessage, *, keep_waiting: bool = False) -> None:
        await broker.publish(m)  # as Broker.publish without keep_waiting: the confirm is given up

    with pytest.raises(ConfirmTimeout):
        await dedup.publish_once(message(), publish)
    assert not (await dedup.publish_once(message(), broker.publish)).duplicate


def test_every_late_outcome_has_a_pre_created_series() -> None:
    metrics = Metrics(CollectorRegistry())
    for outcome in LATE_OUTCOMES:
        assert metrics.registry.get_sample_value("swgw_dedup_late_outcomes_total", {"outcome": outcome}) == 0


class BrokenStore(SqliteStore):
    """A store whose every call fails, as when the database is down."""

    async def claim(self, arrival: Arrival) -> Claimed | Seen | InFlight:
        raise StoreError("database down")

    async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
        raise StoreError("database down")


async def test_store_down_rejects_with_503_by_default_or_accepts_unchecked(tmp_path: Path) -> None:
    broker = Broker()
    store = BrokenStore(Dedup(path=tmp_path / "x.sqlite3"))
    errors: list[str] = []
    with pytest.raises(DedupUnavailable) as caught:
        await Deduplicator(store, retry_after_s=7, on_error=errors.append).publish_once(message(), broker.publish)
    assert (caught.value.status, caught.value.retry_after_s) == (503, 7)
    assert broker.published == []
    assert errors == ["claim"]  # counted for ops (swgw_dedup_store_errors_total)
    receipt = await Deduplicator(store, on_store_error="accept").publish_once(message(), broker.publish)
    assert not receipt.duplicate
    assert broker.published == ["M-1"]


async def test_a_failed_record_after_the_confirm_still_answers_202(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class RecordFails(SqliteStore):
        async def confirm(self, claim: Claimed, receipt: Receipt) -> bool:
            raise StoreError("disk full")

    errors: list[str] = []
    d = Deduplicator(RecordFails(Dedup(path=tmp_path / "x.sqlite3")), on_error=errors.append)
    await d.start()
    try:
        broker = Broker()
        with caplog.at_level(logging.WARNING, logger="swgw.dedup"):
            receipt = await d.publish_once(message(), broker.publish)
        assert not receipt.duplicate  # the broker has it: the partner gets the 202
        assert broker.published == ["M-1"]
        assert "could not record it as seen: disk full" in caplog.text
        assert errors == ["confirm"]
    finally:
        await d.close()


async def test_backend_none_publishes_every_time() -> None:
    broker = Broker()
    d = Deduplicator.from_settings(Dedup(backend="none"))
    await d.start()
    for _ in range(2):
        assert not (await d.publish_once(message(), broker.publish)).duplicate
    assert broker.published == ["M-1", "M-1"]
    await d.close()


async def test_the_purge_timer_runs(tmp_path: Path) -> None:
    class Watched(SqliteStore):
        purged = asyncio.Event()

        async def purge(self) -> int:
            deleted = await super().purge()
            if deleted:
                self.purged.set()
            return deleted

    clock = Clock()
    store = Watched(Dedup(path=tmp_path / "x.sqlite3"), clock=clock)
    await store.start()
    claim = await store.claim(Arrival.of(message(), now=clock.now))
    assert isinstance(claim, Claimed)
    clock.now += 61  # a stale claim: its publish never settled (records stay for the journal's retention)
    d = Deduplicator(store, purge_interval_s=0.01)
    await d.start()
    try:
        await asyncio.wait_for(store.purged.wait(), timeout=5)
    finally:
        await d.close()


# --- configuration -----------------------------------------------------------------------------


def _settings(tmp_path: Path, dedup: dict[str, object] | None = None, env: dict[str, str] | None = None) -> Dedup:
    doc = config_doc("swgw-Test.1")
    if dedup is not None:
        doc["dedup"] = dedup
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return load_settings(path, env=env or {}).dedup


def test_config_defaults_sqlite_next_to_the_config_with_a_table_per_prefix(tmp_path: Path) -> None:
    d = _settings(tmp_path)
    assert (d.backend, d.window_days, d.on_store_error) == ("sqlite", 7.0, "reject")
    assert (d.claim_timeout_s, d.late_confirm_wait_s) == (60.0, 30.0)
    assert _settings(tmp_path, {"claim_timeout_s": 20, "late_confirm_wait_s": 10}).late_confirm_wait_s == 10.0
    assert d.path == tmp_path / "swgw-dedup.sqlite3"
    assert d.table == "swgw_test_1_dedup"


def test_config_postgres_dsn_from_env_overrides_and_never_prints(tmp_path: Path) -> None:
    d = _settings(
        tmp_path,
        {"backend": "postgres", "dsn": "postgresql://a@h/db", "table": "seen", "window_days": 14},
        env={"SWGW_DEDUP_DSN": "postgresql://secret@h/db"},
    )
    assert d.dsn is not None
    assert d.dsn.reveal() == "postgresql://secret@h/db"
    assert "secret" not in repr(d)
    assert (d.table, d.window_days) == ("seen", 14.0)


@pytest.mark.parametrize(
    ("dedup", "key", "fragment"),
    [
        ({"backend": "redis"}, "dedup.backend", "not one of sqlite, postgres, none"),
        ({"backend": "postgres"}, "dedup.dsn", "is required"),
        ({"dsn": "mysql://x"}, "dedup.dsn", "postgresql://"),
        ({"table": "Bad-Name"}, "dedup.table", "[a-z0-9_]"),
        ({"claim_timeout_s": 3}, "dedup.claim_timeout_s", "must exceed broker.confirm_timeout_s"),
        ({"claim_timeout_s": 30}, "dedup.claim_timeout_s", "confirm_timeout_s + dedup.late_confirm_wait_s (3 + 30)"),
        (
            {"claim_timeout_s": 38, "late_confirm_wait_s": 36},
            "dedup.claim_timeout_s",
            "lower dedup.late_confirm_wait_s",
        ),
        ({"late_confirm_wait_s": 0}, "dedup.late_confirm_wait_s", "must be > 0"),
        ({"on_store_error": "ignore"}, "dedup.on_store_error", "reject, accept"),
        ({"window_days": 0}, "dedup.window_days", "must be > 0"),
        ({"windows_days": 7}, "dedup.windows_days", "unknown key"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, dedup: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, dedup)
    assert caught.value.key == key
    assert fragment in str(caught.value)
