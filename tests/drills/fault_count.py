"""The fault matrix's end-of-drill count: what partners were promised (202) against where
each message ended (delivered, parked, nowhere), and one verdict listing everything that broke.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.drills.queues import Parked

Record = dict[str, Any]  # one line of the load generator's record (tests/drills/loadgen.py)


def accepted(records: Iterable[Record], *, after: float = 0.0) -> list[str]:
    """Ids answered 202, among requests started after wall-clock `after`."""
    return [r["id"] for r in records if r["status"] == 202 and r["ts"] >= after]


def summary(records: list[Record]) -> str:
    by = Counter((r["status"], r["reason"]) for r in records)
    return ", ".join(f"{s}/{reason or '-'}: {n}" for (s, reason), n in sorted(by.items(), key=str))


@dataclass
class FaultCount:
    """What partners were promised against where it ended: delivered, parked or nowhere.

    lost: 202'd ids that never reached the backend and are not parked as the drill expects.
    dead-lettered: parked by RabbitMQ itself (delivery limit), never by the gateway.
    """

    fault: str
    records: list[Record]
    arrived: list[str]  # every successful POST, duplicates included
    parked: list[Parked]
    expect_parked: frozenset[str]
    extra: dict[str, object]
    promised: set[str] = field(init=False)
    lost: list[str] = field(init=False)
    duplicates: int = field(init=False)
    dead_lettered: list[Parked] = field(init=False)

    def __post_init__(self) -> None:
        self.promised = set(accepted(self.records))
        counts = Counter(self.arrived)
        parked_as_expected = {p.message_id for p in self.parked} & self.expect_parked
        self.lost = sorted(self.promised - set(counts) - parked_as_expected)
        self.duplicates = sum(n - 1 for n in counts.values())
        self.dead_lettered = [p for p in self.parked if p.dead_lettered]

    def line(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.extra.items())
        return (
            f"FAULT {self.fault}: posted {len(self.records)}, 202 {len(self.promised)}, "
            f"delivered {len(set(self.arrived))} unique ({len(set(self.arrived) - self.promised)} without a 202), "
            f"lost {len(self.lost)}, duplicates {self.duplicates}, "
            f"parked {len(self.parked)}, dead-lettered {len(self.dead_lettered)}; {extra}; "
            f"answers: {summary(self.records)}"
        )

    def check(self, *, parked: int = 0, also: Iterable[str | None] = ()) -> None:
        """Assert lost 0, dead-lettered 0, `parked` parked, and the drill's own findings (`also`,
        None for a finding that held). One AssertionError lists everything that broke."""
        broken = [p for p in also if p]
        if self.lost:
            broken.insert(0, f"lost {len(self.lost)}: 202'd, never delivered, not parked as expected: {self.lost[:10]}")
        if self.dead_lettered:
            ids = [p.message_id for p in self.dead_lettered][:10]
            broken.append(f"dead-lettered {len(self.dead_lettered)} by the delivery limit (x-death, no reason): {ids}")
        if len(self.parked) != parked:
            found = [(p.message_id, p.reason or "no reason") for p in self.parked][:10]
            broken.append(f"parked {len(self.parked)}, expected {parked}: {found}")
        if self.extra.get("conflicts"):
            broken.append("a duplicate delivery carried different bytes")
        assert not broken, f"{self.line()}\n  - " + "\n  - ".join(broken)
