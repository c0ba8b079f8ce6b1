"""`swgw reconcile`: does the backend hold exactly what the gateway delivered to it?

    swgw reconcile --destination D --since T --until T --backend-ids FILE [--json]

The gateway's side: the messages received in [since, until) (ISO-8601 with an offset) and
routed to D whose status is `delivered` (the backend answered 2xx), by MessageId. The
backend's side: the ids in FILE (`-` for stdin), either

- one id per line: surrounding whitespace (and a CRLF's CR) is trimmed, blank lines are
  skipped; the whole line is the id, or
- CSV whose header row (the first non-blank line) has a `message_id` column (any case,
  any position): that column of each row; rows with it empty are skipped.

A UTF-8 byte-order mark is dropped (spreadsheets write one). An id listed twice counts
once; how many were listed more than once is printed as a warning (a backend that stored a
message twice), without changing the exit code.

Printed: the ids delivered but unknown to the backend (lost after the 2xx, or the backend's
list is incomplete) and the ids the backend holds that the gateway never delivered there in
the window, each with what the gateway knows of it (parked, still pending: a timeout after
the backend had committed; or not received in the window at all: widen the window or
check the backend's list). Exit codes: 0 the two sides are equal, 1 they differ, 2 usage
(unreadable or undecodable file, a CSV without `message_id`, a bad time).

Memory: the two id sets (strings), never the records: a day of 25,000 ids is a few MB. Ids
are compared without the sender: a backend lists MessageIds; if two partners delivered the
same id to D, it is one id here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import InvalidQuery
from gateway.journal.model import JournalReader, Status
from gateway.operations.messages import EXIT_USAGE, open_reader, parse_window, run
from gateway.settings.model import Settings
from gateway.timeutil import iso_unix

EXIT_EQUAL, EXIT_DIFFERENT = 0, 1
ID_COLUMN = "message_id"


class BadIdFile(ValueError):
    """The backend's id file cannot be used (a usage error: exit 2)."""


@dataclass
class BackendIds:
    ids: set[str]
    listed: int  # ids read, repeats included
    repeated: int  # distinct ids listed more than once
    format: str  # "lines" or "csv"


def parse_ids(lines: Iterable[str]) -> BackendIds:
    """The ids of a backend's list (module docstring); raises BadIdFile."""
    rows = iter(lines)
    first = ""
    for line in rows:
        first = line.strip().lstrip("\ufeff").strip()
        if first:
            break
    ids: set[str] = set()
    seen_twice: set[str] = set()
    listed = 0

    def add(value: str) -> None:
        nonlocal listed
        listed += 1
        if value in ids:
            seen_twice.add(value)
        ids.add(value)

    header = [h.strip().lstrip("\ufeff").strip().lower() for h in next(csv.reader([first]))] if first else []
    if ID_COLUMN in header:
        column = header.index(ID_COLUMN)
        for n, row in enumerate(csv.reader(line for line in rows if line.strip()), start=2):
            if column >= len(row):
                raise BadIdFile(f"CSV row {n} has no {ID_COLUMN} column (only {len(row)} fields)")
            if value := row[column].strip():
                add(value)
        return BackendIds(ids, listed, len(seen_twice), "csv")
    if "," in first and len(header) > 1:
        raise BadIdFile(f"the first line looks like a CSV header without a {ID_COLUMN!r} column: {first[:80]!r}")
    if first:
        add(first)
    for line in rows:
        if value := line.strip():
            add(value)
    return BackendIds(ids, listed, len(seen_twice), "lines")


def read_ids(path: str) -> BackendIds:
    """parse_ids of a file (`-`: stdin), decoded as UTF-8 (a BOM dropped); BadIdFile if unreadable."""
    try:
        if path == "-":
            text = sys.stdin.buffer.read().decode("utf-8-sig")
        else:
            text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise BadIdFile(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadIdFile(f"{path} is not UTF-8 text (byte {exc.start}); export it as UTF-8") from exc
    return parse_ids(io.StringIO(text, newline=None))


@dataclass
class Reconciliation:
    destination: str
    since: float
    until: float
    delivered: int
    backend: BackendIds
    missing_at_backend: list[str]  # delivered by the gateway, unknown to the backend
    unknown_to_gateway: list[str]  # held by the backend, not delivered there by the gateway in the window
    gateway_status: dict[str, str] = field(default_factory=dict)  # of unknown_to_gateway ids received in the window

    @property
    def equal(self) -> bool:
        return not self.missing_at_backend and not self.unknown_to_gateway

    def as_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "since": iso_unix(self.since),
            "until": iso_unix(self.until),
            "delivered_by_gateway": self.delivered,
            "held_by_backend": len(self.backend.ids),
            "backend_ids_listed": self.backend.listed,
            "backend_ids_repeated": self.backend.repeated,
            "equal": self.equal,
            "delivered_unknown_to_backend": self.missing_at_backend,
            "at_backend_not_delivered_by_gateway": [
                {"message_id": i, "gateway_status": self.gateway_status.get(i)} for i in self.unknown_to_gateway
            ],
        }


async def reconcile(
    reader: JournalReader, destination: str, since: float, until: float, backend: BackendIds
) -> Reconciliation:
    """Stream the window for `destination`; keep only ids (and the status of ids the backend also lists)."""
    delivered: set[str] = set()
    other: dict[str, str] = {}  # received in the window but not delivered, and listed by the backend
    async for record in reader.window(since, until, destination):
        if record.status is Status.DELIVERED:
            delivered.add(record.message_id)
        elif record.message_id in backend.ids:
            other[record.message_id] = record.status.value
    unknown = sorted(backend.ids - delivered)
    return Reconciliation(
        destination,
        since,
        until,
        len(delivered),
        backend,
        missing_at_backend=sorted(delivered - backend.ids),
        unknown_to_gateway=unknown,
        gateway_status={i: other[i] for i in unknown if i in other},
    )


def write_text(r: Reconciliation, out: TextIO) -> None:
    out.write(
        f"{r.destination}: messages received {iso_unix(r.since)} .. {iso_unix(r.until)}: "
        f"the gateway delivered {r.delivered}, the backend lists {len(r.backend.ids)}\n"
    )
    if r.backend.repeated:
        out.write(f"warning: {r.backend.repeated} id(s) are listed more than once by the backend (counted once)\n")
    out.write(f"delivered by the gateway, unknown to the backend: {len(r.missing_at_backend)}\n")
    for i in r.missing_at_backend:
        out.write(f"  {i}\n")
    out.write(f"held by the backend, not delivered there by the gateway: {len(r.unknown_to_gateway)}\n")
    for i in r.unknown_to_gateway:
        status = r.gateway_status.get(i)
        note = f"gateway status: {status}" if status else "not received by the gateway for it in this window"
        out.write(f"  {i}  ({note})\n")
    out.write("equal\n" if r.equal else "different\n")


def cmd_reconcile(args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> int:
        since, until = parse_window(args.since, args.until)
        if args.destination not in {d.id for d in settings.destinations}:
            raise InvalidQuery("destination", f"{args.destination!r} is not a destination of {settings.path}")
        try:
            backend = read_ids(args.backend_ids)
        except BadIdFile as exc:
            print(f"usage: --backend-ids: {exc}", file=sys.stderr)
            return EXIT_USAGE
        async with open_reader(settings) as reader:
            result = await reconcile(reader, args.destination, since, until, backend)
        if args.json:
            print(json.dumps(result.as_json(), indent=2))
        else:
            write_text(result, sys.stdout)
        return EXIT_EQUAL if result.equal else EXIT_DIFFERENT

    return run(args, work)


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """`swgw reconcile` (cli.py calls this)."""
    p = sub.add_parser(
        "reconcile",
        parents=[common],
        help="compare what the gateway delivered to a destination with the ids its backend holds",
        description="Compare the messages received in [--since, --until) and delivered to --destination "
        "with the MessageIds the backend lists (one per line, or CSV with a message_id column).",
        epilog="exit codes: 0 equal; 1 different; 2 usage (unreadable file, CSV without message_id, bad time)",
    )
    p.add_argument("--destination", required=True, help="destination id")
    p.add_argument("--since", required=True, help="received at or after (ISO-8601 with offset)")
    p.add_argument("--until", required=True, help="received before (ISO-8601 with offset)")
    p.add_argument("--backend-ids", required=True, help="the backend's ids: a file, or - for stdin")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=cmd_reconcile)
