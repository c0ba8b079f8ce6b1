"""The journal through a gateway SIGKILL: every 202 has a record, every delivery is journaled.

The whole gateway runs as `swgw serve` (default role: intake and delivery in one process, the
journal in SQLite next to its config) on the drill node; a partner posts from another process
(tests/drills/loadgen.py) to a slow backend, so deliveries are in flight when the gateway is
SIGKILLed. It is restarted on the same config (same SQLite file), the partner goes on, the
backend speeds up and the backlog drains. Then the drill reads the SQLite file itself, not the
gateway's API, and asserts:

- every id answered 202 has a record with a status: the claim row is the record and it is
  written before the publish, so a 202 without one is impossible whatever the kill hits;
- every id the backend received is `delivered` in the journal once the drain ends, with at
  least one `delivered` event (at-least-once: a repeated `delivered` is allowed and counted).

Why a kill between "event committed" and "ack" cannot lose the event (the drill only hits
that window by chance; the order makes it safe): delivery acks a message only after the
writer's `record()` of its `delivered`/`parked`/`returned` event returned, i.e. after the
transaction holding it committed (SQLite WAL: the commit is in the WAL file, which a killed
process does not lose; synchronous=NORMAL may lose it only to a power cut or OS crash).
Killed before the commit: no event, no ack, the broker redelivers and the event is written
on the next delivery. Killed after the commit, before the ack reached the broker: the event
stays, the broker redelivers, the event is written again (a repeated event, counted below as
`repeated delivered`). There is no order of kill and commit that leaves an ack without its
event. tests/integration/test_journal_events.py holds a message in exactly that window (the
store down) and checks it.

Prints one line (pytest -s): JOURNAL <drill>: posted N, 202 N, ... statuses {...}.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.settings.load import load_settings
from gateway.tools.simulator import Simulator
from tests.drills.harness import (
    Drill,
    GatewayProcess,
    Record,
    accepted,
    holds_within,
    now,
    started_between,
    summary,
    until,
    wait_inflight,
)

pytestmark = [pytest.mark.drill, pytest.mark.timeout(240)]
SENDER = "VN-NSW"


@dataclass
class Journal:
    """What the SQLite file says, read directly: each record's status, and events by (id, kind)."""

    statuses: dict[str, str]
    events: Counter[tuple[str, str]]

    @classmethod
    def read(cls, gw: GatewayProcess) -> Journal:
        settings = load_settings(gw.config)
        path, table = Path(settings.dedup.path), settings.dedup.table
        db = sqlite3.connect(path, timeout=10)
        try:
            statuses = dict(db.execute(f'SELECT message_id, status FROM "{table}" WHERE sender = ?', (SENDER,)))
            rows = db.execute(f'SELECT message_id, kind FROM "{table}_events" WHERE sender = ?', (SENDER,))
            return cls(statuses, Counter(rows))
        finally:
            db.close()

    def delivered(self, ids: set[str]) -> set[str]:
        return {i for i in ids if self.statuses.get(i) == "delivered" and self.events[(i, "delivered")] >= 1}


async def drain_journaled(gw: GatewayProcess, ids: set[str], timeout_s: float = 30) -> Journal:
    """Until every id in `ids` is delivered in the journal (the drain's last commits), then the journal."""
    journal = Journal.read(gw)

    def check() -> bool:
        nonlocal journal
        journal = Journal.read(gw)
        return journal.delivered(ids) == ids

    await holds_within(check, timeout_s, every_s=0.25)
    return journal


def figures(name: str, records: list[Record], sim: Simulator, journal: Journal, **extra: object) -> str:
    promised = set(accepted(records))
    arrived = Counter(d.message_id for d in sim.deliveries)
    posted_ids = {r["id"] for r in records}
    line = (
        f"JOURNAL {name}: posted {len(records)}, 202 {len(promised)}, "
        f"backend received {len(arrived)} unique ({sum(arrived.values()) - len(arrived)} duplicates), "
        f"records {len(posted_ids & set(journal.statuses))} of the posted ids, "
        f"202 without a record {len(promised - set(journal.statuses))}, "
        f"received but not journaled delivered {len(set(arrived) - journal.delivered(set(arrived)))}, "
        f"repeated delivered {sum(1 for i in arrived if journal.events[(i, 'delivered')] > 1)}, "
        f"attempts journaled {sum(n for (_, k), n in journal.events.items() if k == 'attempt')} "
        f"of {sim.posts} backend POSTs (a kill loses the attempts it interrupts), "
        f"statuses {dict(Counter(journal.statuses[i] for i in posted_ids if i in journal.statuses))}"
        + "".join(f", {k} {v}" for k, v in extra.items())
        + f"; answers: {summary(records)}"
    )
    print(line, flush=True)
    return line


async def test_journal_drill_sigkill_mid_traffic_every_202_has_a_record_every_delivery_is_journaled(
    drill: Callable[..., Drill], sim: Simulator
) -> None:
    d = drill()
    await sim.set_mode("slow", delay_ms=150)  # deliveries are in flight when the axe falls
    gw = await d.gateway()  # role "all": intake, delivery and the journal writer in one process
    load = d.start_load(gw, "JK-", rate=40)
    await load.wait_until("40 accepted", lambda r: len(accepted(r)) >= 40, 30)
    await until("10 delivered", lambda: sim.received.unique >= 10, 30)
    await wait_inflight(gw, at_least=2)
    in_flight_posts = sim.posts

    gw.kill()  # SIGKILL mid-traffic: posts in progress, deliveries in flight, events being committed
    killed = now()
    await load.wait_until("posts fail while it is dead", lambda r: any(x["ts"] > killed for x in r), 10)
    gw.start()  # same config, same SQLite file
    await gw.wait_ready()
    back = now()
    await load.wait_until("40 accepted after the restart", lambda r: len(accepted(r, after=back)) >= 40, 30)
    records = load.stop()

    await sim.set_mode("up")
    await d.all_delivered(records)
    arrived = set(sim.ids)
    journal = await drain_journaled(gw, arrived)
    promised = set(accepted(records))
    line = figures(
        "sigkill mid-traffic",
        records,
        sim,
        journal,
        **{
            "backend POSTs before the kill": in_flight_posts,
            "answered during the kill": len(started_between(records, killed, back)),
        },
    )
    no_record = sorted(promised - set(journal.statuses))
    assert not no_record, f"{line}\n202'd without a journal record: {no_record[:10]}"
    assert all(journal.statuses[i] for i in promised), line
    missing = sorted(arrived - journal.delivered(arrived))
    assert not missing, f"{line}\nreceived by the backend, not journaled delivered: {missing[:10]}"
    assert promised <= arrived, line  # (all_delivered above) nothing 202'd is lost either
    assert any(r["status"] == 0 for r in started_between(records, killed, back)), "the gateway was never seen dead"


async def test_journal_drill_intake_and_delivery_processes_share_one_sqlite_file(
    drill: Callable[..., Drill], sim: Simulator
) -> None:
    # `--role ingress` and `--role delivery` in two processes on one config: the same SQLite file
    # (WAL, BEGIN IMMEDIATE across processes). Intake writes the record and `queued`, delivery the
    # attempts and `delivered`; the delivery process is SIGKILLed and restarted mid-drain.
    d = drill()
    await sim.set_mode("slow", delay_ms=100)
    ingress = await d.gateway("ingress")
    delivery = await d.gateway("delivery")
    assert load_settings(ingress.config).dedup.path == load_settings(delivery.config).dedup.path
    load = d.start_load(ingress, "JX-", rate=40, count=120)
    await load.wait_until("40 accepted", lambda r: len(accepted(r)) >= 40, 30)
    await wait_inflight(delivery)
    delivery.kill()
    delivery.start()
    await delivery.wait_ready()
    await load.wait_until("120 answered", lambda r: len(r) >= 120, 60)
    records = load.stop()
    await sim.set_mode("up")
    await d.all_delivered(records)
    arrived = set(sim.ids)
    journal = await drain_journaled(delivery, arrived)
    line = figures("intake and delivery processes, delivery SIGKILLed", records, sim, journal)
    promised = set(accepted(records))
    assert len(promised) == 120, line
    assert journal.delivered(arrived) == arrived == promised, line
    assert all(journal.events[(i, "queued")] == 1 for i in promised), line  # written by the ingress process
    assert all(journal.events[(i, "attempt")] >= 1 for i in promised), line  # by the delivery process
