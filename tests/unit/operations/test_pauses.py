"""Pauses for every replica without a database: a fake control store shared by two 'replicas'."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.errors import StoreError
from gateway.journal.control import PauseState
from gateway.operations.pauses import Pauses


class Store:
    """The control table in memory; `failing` makes every call raise StoreError."""

    def __init__(self) -> None:
        self.rows: dict[str, PauseState] = {}
        self.failing = False

    async def start(self) -> None:
        self._check()

    async def close(self) -> None:
        return None

    async def states(self) -> dict[str, PauseState]:
        self._check()
        return dict(self.rows)

    async def write(self, state: PauseState) -> None:
        self._check()
        self.rows[state.destination] = state

    def _check(self) -> None:
        if self.failing:
            raise StoreError("the database is down")


class Worker:
    def __init__(self) -> None:
        self.paused = False

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False


def replica(store: Store, name: str) -> tuple[Pauses, Worker]:
    worker = Worker()
    return Pauses(SimpleNamespace(workers={"vnaccs": worker}), store, name), worker  # type: ignore[arg-type]


async def test_a_pause_is_written_for_all_then_applied_here_and_read_by_the_others() -> None:
    store = Store()
    (a, wa), (b, wb) = replica(store, "gw-a"), replica(store, "gw-b")
    await a.set("vnaccs", True, "admin api")
    assert wa.paused
    assert not wb.paused  # until b reads the table
    await b.sync()
    assert wb.paused
    assert store.rows["vnaccs"].by == "gw-a: admin api"
    await b.set("vnaccs", False, "admin api")
    await a.sync()
    assert not wa.paused


async def test_a_restarted_replica_loads_the_state_before_it_consumes() -> None:
    store = Store()
    a, _ = replica(store, "gw-a")
    await a.set("vnaccs", True, "admin api")
    restarted, worker = replica(store, "gw-b")
    await restarted.load(timeout_s=1)
    assert worker.paused


async def test_a_store_that_does_not_answer_changes_nothing() -> None:
    store = Store()
    a, worker = replica(store, "gw-a")
    store.failing = True
    with pytest.raises(StoreError):
        await a.set("vnaccs", True, "admin api")
    assert not worker.paused  # not paused here alone: SAC would hand the queue to another replica
    await a.load(timeout_s=1)  # at start-up: logged, the poller applies it later
    assert not worker.paused


async def test_without_a_store_a_pause_is_local() -> None:
    worker = Worker()
    local = Pauses(SimpleNamespace(workers={"vnaccs": worker}), None, "gw-a")  # type: ignore[arg-type]
    await local.set("vnaccs", True, "admin api")
    assert worker.paused
    assert not local.shared
