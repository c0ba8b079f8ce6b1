"""`swgw report`: what happened to the messages of a time window, the account ops owe after an outage.

    swgw report --since T --until T [--destination D] [--format text|csv|json]

The messages are those *received* in [since, until) (ISO-8601 with an offset), counted by
their status *now*, per destination and message type:

    received        accepted (202) in the window
    delivered       the backend answered 2xx
    parked          parked or dead-lettered: waiting for ops (replay) or the partner (a fix)
    pending         queued or delivering (or `received`: a claim whose confirm never came)
    duplicates      re-sends of an accepted id answered 200, and 409 conflicts (same id, another
                    body), that *arrived* in the window, by the original message's destination
                    and type (re-sends of messages received before the window count too)
    longest         the longest time from receipt to delivery, and which message it was

and per destination the circuit's open periods in the window (from `circuit` events: open
and half_open are one outage until `closed`). A period that began before `since` starts at
`since`, marked "(open before the window)"; one still open at `until` ends there, marked
"(still open)".

`--format csv` is one row per message instead (`CSV_COLUMNS`), for the backend's team.

Memory: records are streamed (`JournalReader.window`, keyset chunks) and only counters per
(destination, type) are kept, so a day of 25,000 messages, or a year, costs what its groups
cost. Duplicates are rarer; the type of each re-sent id is looked up once and remembered.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from gateway.journal.model import Event, EventKind, JournalReader, MessageRecord, Status
from gateway.operations.messages import open_reader, parse_window, run
from gateway.progress import Progress
from gateway.settings.model import Settings
from gateway.timeutil import iso_unix, unix_or_none

CSV_COLUMNS = (
    "message_id",
    "sender",
    "message_type",
    "destination",
    "status",
    "received_at",
    "delivered_at",
    "attempts",
)
PARKED = (Status.PARKED, Status.DEAD_LETTERED)
PENDING = (Status.RECEIVED, Status.QUEUED, Status.DELIVERING)
OPENED = ("open", "half_open")


@dataclass
class Counts:
    """One (destination, message type)'s counters: all a report keeps per message."""

    received: int = 0
    delivered: int = 0
    parked: int = 0
    pending: int = 0
    duplicates: int = 0
    conflicts: int = 0
    longest_s: float | None = None
    longest_message_id: str | None = None

    def count(self, record: MessageRecord) -> None:
        self.received += 1
        if record.status is Status.DELIVERED:
            self.delivered += 1
            received, delivered = unix_or_none(record.received_at), unix_or_none(record.delivered_at)
            if received is not None and delivered is not None:
                took = delivered - received
                if self.longest_s is None or took > self.longest_s:
                    self.longest_s, self.longest_message_id = took, record.message_id
        elif record.status in PARKED:
            self.parked += 1
        elif record.status in PENDING:
            self.pending += 1

    def add(self, other: Counts) -> None:
        for name in ("received", "delivered", "parked", "pending", "duplicates", "conflicts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.longest_s is not None and (self.longest_s is None or other.longest_s > self.longest_s):
            self.longest_s, self.longest_message_id = other.longest_s, other.longest_message_id


@dataclass(frozen=True)
class OpenPeriod:
    """The circuit of `destination` was open (or half open) from `opened` to `closed` (unix times).

    `clipped_start`: it opened before the window (`opened` is the window's start);
    `clipped_end`: it was still open at the window's end, or now (`closed` is that time).
    """

    destination: str
    opened: float
    closed: float
    clipped_start: bool
    clipped_end: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "opened_at": iso_unix(self.opened),
            "closed_at": iso_unix(self.closed),
            "duration_s": round(self.closed - self.opened, 3),
            "open_before_window": self.clipped_start,
            "still_open": self.clipped_end,
        }


def open_periods(events: Iterable[Event], since: float, until: float, now: float) -> dict[str, list[OpenPeriod]]:
    """The open periods per destination from circuit events (oldest first; events before `since`
    tell only the state the window starts in)."""
    opened: dict[str, tuple[float, bool]] = {}  # destination -> (start, clipped)
    periods: dict[str, list[OpenPeriod]] = {}
    for e in events:
        if e.kind is not EventKind.CIRCUIT:
            continue
        periods.setdefault(e.destination, [])
        is_open = e.detail in OPENED
        if e.at < since:
            if is_open:
                opened[e.destination] = (since, True)
            else:
                opened.pop(e.destination, None)
        elif is_open and e.destination not in opened:
            opened[e.destination] = (e.at, False)
        elif not is_open and e.destination in opened:
            start, clipped = opened.pop(e.destination)
            periods[e.destination].append(OpenPeriod(e.destination, start, e.at, clipped, False))
    end = min(until, now)
    for dest, (start, clipped) in opened.items():
        periods[dest].append(OpenPeriod(dest, start, max(end, start), clipped, True))
    return periods


@dataclass
class Report:
    since: float
    until: float
    destination: str | None
    as_of: float  # when the statuses were read
    groups: dict[tuple[str, str], Counts] = field(default_factory=dict)
    circuit: dict[str, list[OpenPeriod]] = field(default_factory=dict)

    def destinations(self) -> list[str]:
        return sorted({d for d, _ in self.groups} | set(self.circuit))

    def total(self, destination: str | None = None) -> Counts:
        out = Counts()
        for (d, _), c in self.groups.items():
            if destination is None or d == destination:
                out.add(c)
        return out

    def as_json(self) -> dict[str, Any]:
        def counts(c: Counts) -> dict[str, Any]:
            body = asdict(c)
            body["longest_s"] = round(c.longest_s, 3) if c.longest_s is not None else None
            return body

        return {
            "since": iso_unix(self.since),
            "until": iso_unix(self.until),
            "destination": self.destination,
            "as_of": iso_unix(self.as_of),
            "groups": [{"destination": d, "message_type": t, **counts(c)} for (d, t), c in sorted(self.groups.items())],
            "circuit_open": {d: [p.as_json() for p in self.circuit.get(d, [])] for d in self.destinations()},
            "total": counts(self.total()),
        }


async def build(
    reader: JournalReader,
    since: float,
    until: float,
    destination: str | None = None,
    *,
    now: float | None = None,
    progress: Callable[[int], None] = lambda read: None,
) -> Report:
    """Stream the window into counters; then duplicates and conflicts, then circuit periods.
    `progress(read)` is called with the number of messages read so far."""
    now = time.time() if now is None else now
    report = Report(since, until, destination, as_of=now)
    read = 0
    async for record in reader.window(since, until, destination):
        read += 1
        progress(read)
        key = (record.destination, record.message_type)
        group = report.groups.get(key)
        if group is None:
            group = report.groups[key] = Counts()
        group.count(record)
    # A re-send is journaled under its sender and id; its original says where and what it is.
    originals: dict[tuple[str, str], tuple[str, str]] = {}
    async for e in reader.events(since, until, kinds=[EventKind.DUPLICATE, EventKind.CONFLICT]):
        where = originals.get((e.sender, e.message_id))
        if where is None:
            original = await reader.message(e.sender, e.message_id)
            where = (original.destination, original.message_type) if original else (e.destination, "?")
            originals[(e.sender, e.message_id)] = where
        if destination is not None and where[0] != destination:
            continue
        group = report.groups.setdefault(where, Counts())
        if e.kind is EventKind.DUPLICATE:
            group.duplicates += 1
        else:
            group.conflicts += 1
    events = await reader.destination_events(since, until, destination)
    report.circuit = open_periods(events, since, until, now)
    return report


def duration(seconds: float | None) -> str:
    """`3h04m05s`, `12m00s`, `4.2s`; `-` for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_text(report: Report, out: TextIO) -> None:
    scope = f" for {report.destination}" if report.destination else ""
    out.write(f"messages received {iso_unix(report.since)} .. {iso_unix(report.until)}{scope}\n")
    out.write(f"status as of {iso_unix(report.as_of)}\n")
    header = (
        f"  {'TYPE':<10} {'RECEIVED':>8} {'DELIVERED':>9} {'PARKED':>6} {'PENDING':>7} {'DUPL.':>5} {'CONFL.':>6}  "
        "LONGEST RECEIPT->DELIVERY"
    )
    for dest in report.destinations():
        out.write(f"\n{dest}\n")
        periods = report.circuit.get(dest, [])
        if not periods:
            out.write("  circuit: no open period in the window\n")
        for p in periods:
            notes = [n for n, on in (("open before the window", p.clipped_start), ("still open", p.clipped_end)) if on]
            note = f" ({', '.join(notes)})" if notes else ""
            span = f"{iso_unix(p.opened)} .. {iso_unix(p.closed)}"
            out.write(f"  circuit open {span}  {duration(p.closed - p.opened)}{note}\n")
        types = sorted(t for d, t in report.groups if d == dest)
        if not types:
            continue
        out.write(header + "\n")
        rows = [(t, report.groups[(dest, t)]) for t in types]
        if len(rows) > 1:
            rows.append(("(all)", report.total(dest)))
        for name, c in rows:
            longest = f"{duration(c.longest_s)} ({c.longest_message_id})" if c.longest_message_id else "-"
            out.write(
                f"  {name:<10} {c.received:>8} {c.delivered:>9} {c.parked:>6} {c.pending:>7} "
                f"{c.duplicates:>5} {c.conflicts:>6}  {longest}\n"
            )
    t = report.total()
    out.write(
        f"\ntotal: {t.received} received, {t.delivered} delivered, {t.parked} parked, {t.pending} pending, "
        f"{t.duplicates} duplicates, {t.conflicts} conflicts\n"
    )


async def write_csv(
    reader: JournalReader,
    since: float,
    until: float,
    destination: str | None,
    out: TextIO,
    progress: Callable[[int], None] = lambda rows: None,
) -> int:
    """One row per message received in the window (CSV_COLUMNS), streamed; returns the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rows = 0
    async for r in reader.window(since, until, destination):
        writer.writerow(
            [r.message_id, r.sender, r.message_type, r.destination, r.status.value, r.received_at,
             r.delivered_at or "", r.attempts]
        )  # fmt: skip
        rows += 1
        progress(rows)
    return rows


def cmd_report(args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> int:
        since, until = parse_window(args.since, args.until)
        # Count and rate of the messages read, on stderr when it is a terminal (the window's size is not known).
        with Progress("report: messages read") as shown:
            async with open_reader(settings) as reader:
                if args.format == "csv":
                    await write_csv(reader, since, until, args.destination, sys.stdout, shown.update)
                    return 0
                report = await build(reader, since, until, args.destination, progress=shown.update)
        if args.format == "json":
            print(json.dumps(report.as_json(), indent=2))
        else:
            write_text(report, sys.stdout)
        return 0

    return run(args, work)


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """`swgw report` (cli.py calls this)."""
    p = sub.add_parser(
        "report",
        parents=[common],
        help="per destination and type: received, delivered, parked, pending, duplicates, circuit open periods",
        description="What happened to the messages received in [--since, --until): counts by status now, "
        "per destination and message type, and the circuit's open periods.",
        epilog="exit codes: 0 ok; 1 the journal is off or unreachable; 2 usage (a bad time, named)",
    )
    p.add_argument("--since", required=True, help="received at or after (ISO-8601 with offset)")
    p.add_argument("--until", required=True, help="received before (ISO-8601 with offset)")
    p.add_argument("--destination", help="one destination (default: all)")
    p.add_argument(
        "--format",
        choices=("text", "csv", "json"),
        default="text",
        help="text (default); json; csv: one row per message (" + ", ".join(CSV_COLUMNS) + ")",
    )
    p.set_defaults(func=cmd_report)
