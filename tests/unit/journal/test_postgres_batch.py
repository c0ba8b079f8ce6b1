"""Group commit of intake's claims and confirms (gateway/journal/postgres_batch.py).

Concurrent calls must answer exactly what the same calls one after the other answer, each
caller its own result or its own error. The equivalence runs on both stores (SQLite groups
its calls too); the rest is PostgreSQL's batching: one statement per batch, errors, cancels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import StoreError
from gateway.journal.model import EventKind
from gateway.journal.postgres import PostgresStore
from gateway.journal.store import Arrival, Claimed, ClaimResult, InFlight, JournalStore, Seen
from gateway.observability.metrics import Metrics
from tests.unit.journal.stores import DAY, T0, Stores, arrival, queued, receipt_of, until

POSTGRES = pytest.mark.parametrize("stores", ["postgres"], indirect=True)


async def _setup(store: JournalStore, stores: Stores, sender: str) -> None:
    """E queued out of the window, F a stale claim, B and C queued, D pending: as seen at T0."""
    stores.clock.now = T0 - 8 * DAY
    await queued(store, arrival("E", "e1", sender=sender))
    stores.clock.now = T0 - 120  # claim_timeout_s is 60 (conftest)
    assert isinstance(await store.claim(arrival("F", "f1", sender=sender)), Claimed)
    stores.clock.now = T0
    await queued(store, arrival("B", "b1", sender=sender))
    await queued(store, arrival("C", "c1", sender=sender))
    assert isinstance(await store.claim(arrival("D", "d1", sender=sender)), Claimed)


def _batch(sender: str) -> list[Arrival]:
    """Every answer a claim can get, and the same id twice (G, E, B) in one batch."""
    ids = [("A", "a"), ("B", "b1"), ("C", "c2"), ("D", "d2"), ("E", "e2"), ("F", "f2")]
    ids += [("G", "g1"), ("G", "g2"), ("E", "e3"), ("B", "b2")]
    return [arrival(message_id, digest, sender=sender) for message_id, digest in ids]


def _shape(results: Sequence[ClaimResult]) -> list[Any]:
    """Results without what differs between two senders (tokens, the sender)."""
    return [("claimed", r.message_id, r.at) if isinstance(r, Claimed) else r for r in results]


def _trips(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Statements sent (`_call`), and the calls each one carried."""
    trips: list[int] = []
    original = store._call

    async def counting(fn: Any, **kw: Any) -> Any:
        trips.append(1)
        return await original(fn, **kw)

    monkeypatch.setattr(store, "_call", counting)
    return trips


async def test_concurrent_claims_answer_exactly_what_the_same_claims_one_after_the_other_answer(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores.started()
    await _setup(store, stores, "SEQ")
    await _setup(store, stores, "CON")
    one_by_one = [await store.claim(a) for a in _batch("SEQ")]
    trips = _trips(store, monkeypatch) if isinstance(store, PostgresStore) else []
    together = await asyncio.gather(*(store.claim(a) for a in _batch("CON")))
    assert _shape(together) == _shape(one_by_one)
    assert [type(r).__name__ for r in together] == [
        "Claimed", "Seen", "Seen", "InFlight", "Claimed", "Claimed", "Claimed", "InFlight", "InFlight", "Seen",
    ]  # fmt: skip
    c = together[2]
    assert isinstance(c, Seen)
    assert c.digest == "c1"
    if isinstance(store, PostgresStore):
        assert len(trips) == 2  # one statement for the batch, one for the ids it held twice
    for sender in ("SEQ", "CON"):  # the first claim of an id wrote the record, the second nothing
        g, e = await store.message(sender, "G"), await store.message(sender, "E")
        assert g is not None
        assert e is not None
        assert (g.sha256, e.sha256) == ("g1", "e2")

    # and the confirms: all of them, and a claim confirmed twice in one batch (its second is refused)
    claims = [r for r in together if isinstance(r, Claimed)]
    calls = [store.confirm(r, receipt_of(arrival(r.message_id, sender="CON"))) for r in claims]
    done = await asyncio.gather(*calls, store.confirm(claims[0], receipt_of(arrival("A", sender="CON"))))
    assert done == [True] * len(claims) + [False]
    for r in claims:
        kinds = [e.kind for e in await store.history("CON", r.message_id)]
        assert kinds.count(EventKind.QUEUED) == (2 if r.message_id == "E" else 1)  # E's earlier life kept its event


@POSTGRES
async def test_a_failed_statement_fails_every_caller_in_it_each_with_its_own_error(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores.started()
    assert isinstance(store, PostgresStore)
    original = store._call
    failures = [ConnectionResetError("connection lost")]

    async def failing_once(fn: Any, **kw: Any) -> Any:
        if failures:
            raise StoreError("postgres: connection lost") from failures.pop()
        return await original(fn, **kw)

    monkeypatch.setattr(store, "_call", failing_once)
    results = await asyncio.gather(*(store.claim(arrival(f"M-{i}")) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results), results
    assert len({id(r) for r in results}) == 5  # raised in five tasks: five exceptions
    assert all(isinstance(r.__cause__, ConnectionResetError) for r in results if isinstance(r, BaseException))
    assert await store.message("VN-NSW", "M-0") is None  # nothing of the batch was written
    # the next batch is unaffected, and so are confirms: a failed one leaves the claims pending
    claims = await asyncio.gather(*(store.claim(arrival(f"M-{i}")) for i in range(3)))
    assert all(isinstance(c, Claimed) for c in claims)
    failures.append(ConnectionResetError("connection lost"))
    confirms = [store.confirm(c, receipt_of(arrival(c.message_id))) for c in claims if isinstance(c, Claimed)]
    outcome = await asyncio.gather(*confirms, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in outcome), outcome
    assert await store.claim(arrival("M-0")) == InFlight()  # still pending: not queued


@POSTGRES
async def test_a_value_the_database_refuses_fails_only_its_own_caller(stores: Stores) -> None:
    store = await stores.started()
    bad = arrival("BAD", size=2**40)  # out of the integer column's range
    results = await asyncio.gather(
        store.claim(arrival("M-1")), store.claim(bad), store.claim(arrival("M-2")), return_exceptions=True
    )
    assert isinstance(results[0], Claimed)
    assert isinstance(results[2], Claimed)
    assert isinstance(results[1], StoreError)
    assert await store.message("VN-NSW", "BAD") is None


@POSTGRES
async def test_a_cancelled_caller_leaves_the_batch_alone(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await stores.started()
    assert isinstance(store, PostgresStore)
    gate, sent = asyncio.Event(), asyncio.Event()
    original = store._call

    async def held(fn: Any, **kw: Any) -> Any:
        sent.set()
        await gate.wait()
        return await original(fn, **kw)

    monkeypatch.setattr(store, "_call", held)
    in_flight = [asyncio.create_task(store.claim(arrival(f"L-{i}"))) for i in range(4)]
    await sent.wait()
    queued_next = [asyncio.create_task(store.claim(arrival(f"Q-{i}"))) for i in range(4)]
    await until(lambda: len(store._claims._queue) == 4)
    in_flight[2].cancel()  # its batch is in flight: the others get their results, its claim is written
    queued_next[1].cancel()  # its batch is not sent yet: its claim is left out, the others go
    gate.set()
    results = await asyncio.gather(*in_flight, *queued_next, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert isinstance(results[5], asyncio.CancelledError)
    assert all(isinstance(r, Claimed) for i, r in enumerate(results) if i not in (2, 5)), results
    assert await store.message("VN-NSW", "L-2") is not None  # as one statement sent before the cancel would be
    assert await store.message("VN-NSW", "Q-1") is None


@POSTGRES
async def test_the_batching_tasks_are_supervised_and_stop_with_the_store(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(CollectorRegistry())
    store = PostgresStore(stores.settings, clock=stores.clock, restarts=metrics.task_restarts)
    stores.opened.append(store)
    await store.start()
    names = {"journal-postgres-claims", "journal-postgres-confirms"}
    assert names <= {t.get_name() for t in asyncio.all_tasks()}

    async def broken(calls: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store._claims, "_run", broken)
    with pytest.raises(StoreError, match="a bug"):
        await store.claim(arrival())
    monkeypatch.undo()
    assert isinstance(await store.claim(arrival()), Claimed)  # restarted (after supervise's backoff)
    assert metrics.task_restarts.labels("journal-postgres-claims")._value.get() == 1
    await store.close()
    assert not names & {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    with pytest.raises(StoreError, match="closed"):
        await store.claim(arrival("M-2"))
