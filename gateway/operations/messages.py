"""Looking messages up in the journal, for ops: one message with its history, or a filtered page.

The admin API (`GET /admin/messages/{sender}/{message_id}`, `GET /admin/messages`) and the
CLI (`swgw messages show`, `swgw messages list`) share what is here: the filters and their
checks (a bad one names its parameter), the JSON of a record and of an event, and how the
CLI opens the journal store read-side (`open_reader`, also used by `swgw report` and
`swgw reconcile`).

Filters (query parameters, or the CLI's `--status` ...):

    status       one of model.Status (queued, delivering, delivered, parked, dead_lettered, received)
    destination  a destination id            partner   the sending partner id
    type         a message type              since / until   received in [since, until),
    cursor       next_cursor of the previous page               ISO-8601 with an offset
    limit        1..1000 (default 100)

Pages are newest first; `next_cursor` is null on the last page. Paging is keyset paging in
the store, so messages arriving meanwhile never shift a later page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidQuery, JournalDisabled
from gateway.journal import queries
from gateway.journal.model import Event, JournalReader, MessageFilter, MessageRecord, Page, Status
from gateway.journal.service import make_store
from gateway.settings.load import load_settings
from gateway.settings.model import Settings
from gateway.timeutil import iso_unix, parse_iso

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FILTERS = ("status", "destination", "partner", "type", "since", "until", "cursor", "limit")
"""The query parameters of `GET /admin/messages`; any other is refused (a typo must not widen a search)."""

EXIT_USAGE = 2


def parse_when(parameter: str, text: str) -> float:
    """An ISO-8601 date-time with an offset (`...Z` or `...+07:00`) as unix time; InvalidQuery otherwise."""
    try:
        ts = parse_iso(text.strip())
    except ValueError:
        example = "2026-11-23T08:00:00+07:00"
        raise InvalidQuery(parameter, f"{text!r} is not an ISO-8601 date-time (e.g. {example})") from None
    if ts.tzinfo is None:
        raise InvalidQuery(parameter, f"{text!r} has no UTC offset; add one (e.g. +07:00, or Z for UTC)")
    return ts.timestamp()


def parse_window(since: str, until: str) -> tuple[float, float]:
    """[since, until) as unix times; `until` must come after `since`."""
    start, end = parse_when("since", since), parse_when("until", until)
    if end <= start:
        raise InvalidQuery("until", f"{until!r} must be after since ({since!r})")
    return start, end


@dataclass(frozen=True)
class Query:
    """A checked `GET /admin/messages` / `swgw messages list` request."""

    filter: MessageFilter
    cursor: str | None
    limit: int


def parse_query(params: Mapping[str, str | None]) -> Query:
    """Check the filters (FILTERS; empty means absent); InvalidQuery names the first bad one."""
    unknown = sorted(set(params) - set(FILTERS))
    if unknown:
        raise InvalidQuery(unknown[0], f"not a filter; use {', '.join(FILTERS)}")
    given = {k: v.strip() for k, v in params.items() if v is not None and v.strip()}
    status = None
    if "status" in given:
        try:
            status = Status(given["status"])
        except ValueError:
            known = ", ".join(s.value for s in Status)
            raise InvalidQuery("status", f"{given['status']!r} is not one of {known}") from None
    since = parse_when("since", given["since"]) if "since" in given else None
    until = parse_when("until", given["until"]) if "until" in given else None
    if since is not None and until is not None and until <= since:
        raise InvalidQuery("until", f"{given['until']!r} must be after since ({given['since']!r})")
    cursor = given.get("cursor")
    if cursor is not None:
        try:
            queries.decode_cursor(cursor)
        except queries.InvalidCursor:
            raise InvalidQuery("cursor", "not a next_cursor this journal handed out") from None
    limit = DEFAULT_LIMIT
    if "limit" in given:
        try:
            limit = int(given["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidQuery("limit", f"{given['limit']!r} must be a whole number from 1 to {MAX_LIMIT}")
    flt = MessageFilter(
        status=status,
        destination=given.get("destination"),
        sender=given.get("partner"),
        message_type=given.get("type"),
        since=since,
        until=until,
    )
    return Query(flt, cursor, limit)


def record_json(record: MessageRecord) -> dict[str, Any]:
    """Every field of the record (`sender` is the partner), `status` as its string."""
    return {
        "sender": record.sender,
        "message_id": record.message_id,
        "message_type": record.message_type,
        "receiver": record.receiver,
        "destination": record.destination,
        "status": record.status.value,
        "received_at": record.received_at,
        "delivered_at": record.delivered_at,
        "attempts": record.attempts,
        "parked_reason": record.parked_reason,
        "size": record.size,
        "sha256": record.sha256,
        "updated_at": record.updated_at,
    }


def event_json(event: Event) -> dict[str, Any]:
    """One history entry: its time as ISO-8601 (UTC, milliseconds) and the fields it carries."""
    body: dict[str, Any] = {"at": iso_unix(event.at), "event": event.kind.value}
    if event.destination:
        body["destination"] = event.destination
    for name in ("status", "error"):
        value = getattr(event, name)
        if value is not None:
            body[name] = value
    if event.duration_s is not None:
        body["duration_s"] = round(event.duration_s, 6)
    if event.detail:
        body["detail"] = event.detail
    return body


async def show(reader: JournalReader, sender: str, message_id: str) -> dict[str, Any] | None:
    """The record and its full history, oldest event first; None if the journal has no such message."""
    record = await reader.message(sender, message_id)
    if record is None:
        return None
    history = await reader.history(sender, message_id)
    return {**record_json(record), "history": [event_json(e) for e in history]}


async def search(reader: JournalReader, query: Query) -> dict[str, Any]:
    page: Page = await reader.search(query.filter, cursor=query.cursor, limit=query.limit)
    return {"messages": [record_json(r) for r in page.records], "next_cursor": page.next_cursor}


# -- the CLI ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_reader(settings: Settings) -> AsyncIterator[JournalReader]:
    """The journal store of `settings`, opened for reading and closed afterwards.

    Refuses (JournalDisabled) when the journal is off, and when the SQLite file does not
    exist: opening it would create an empty journal and answer "nothing" for a wrong path.
    """
    if settings.dedup.backend == "none" or not settings.journal.enabled:
        raise JournalDisabled(f"{settings.path}: the journal is off ([journal] enabled, [dedup] backend)")
    if settings.dedup.backend == "sqlite" and not settings.dedup.path.exists():
        raise JournalDisabled(f"{settings.path}: no journal at {settings.dedup.path} ([dedup] path)")
    store = make_store(settings.dedup, settings.journal)
    assert store is not None
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def run(args: argparse.Namespace, work: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    """Load `--config` and run `work`; a bad filter is a usage error (exit 2), named on stderr."""
    settings = load_settings(args.config)
    try:
        return asyncio.run(work(settings))
    except InvalidQuery as exc:
        print(f"usage: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE


def _text_record(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['sender']} {r['message_id']}: {r['status']}",
        f"  type {r['message_type']}  to {r['receiver']}  destination {r['destination']}",
        f"  received  {r['received_at']}",
        f"  delivered {r['delivered_at'] or '-'}  after {r['attempts']} attempt(s)",
        f"  size {r['size']} bytes  sha256 {r['sha256']}",
    ]
    if r["parked_reason"]:
        lines.append(f"  parked: {r['parked_reason']}")
    return lines


def _text_event(e: dict[str, Any]) -> str:
    extra = [f"{k}={e[k]}" for k in ("status", "error") if k in e]
    if "duration_s" in e:
        ms = e["duration_s"] * 1000
        extra.append(f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms")
    if "detail" in e:
        extra.append(json.dumps(e["detail"], ensure_ascii=False))
    return f"  {e['at']}  {e['event']:<13} {' '.join(extra)}".rstrip()


def cmd_show(args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> int:
        async with open_reader(settings) as reader:
            found = await show(reader, args.sender, args.message_id)
        if found is None:
            print(f"no message {args.message_id!r} from {args.sender!r} in the journal", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2))
        else:
            print("\n".join(_text_record(found)))
            print("history:")
            print("\n".join(_text_event(e) for e in found["history"]))
        return 0

    return run(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> int:
        params = {name: getattr(args, name) for name in FILTERS}
        query = parse_query({k: str(v) if v is not None else None for k, v in params.items()})
        async with open_reader(settings) as reader:
            page = await search(reader, query)
        if args.json:
            print(json.dumps(page, ensure_ascii=False, indent=2))
            return 0
        print(
            f"{'RECEIVED AT':<24} {'PARTNER':<10} {'MESSAGE ID':<24} {'TYPE':<8} "
            f"{'DESTINATION':<12} {'STATUS':<13} TRIES"
        )
        for r in page["messages"]:
            print(
                f"{r['received_at']:<24} {r['sender']:<10} {r['message_id']:<24} {r['message_type']:<8} "
                f"{r['destination']:<12} {r['status']:<13} {r['attempts']}"
            )
        more = f"; next page: --cursor {page['next_cursor']}" if page["next_cursor"] else " (last page)"
        print(f"{len(page['messages'])} message(s){more}", file=sys.stderr)
        return 0

    return run(args, work)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`swgw messages show` and `swgw messages list` (cli.py calls this)."""
    group = sub.add_parser("messages", help="look messages up in the journal").add_subparsers(
        dest="messages_cmd", required=True
    )
    p = group.add_parser("show", parents=[common], help="one message's record and its full history")
    p.add_argument("sender", help="the sending partner id")
    p.add_argument("message_id", help="the envelope's MessageId")
    p.add_argument("--json", action="store_true", help="the admin API's JSON")
    p.set_defaults(func=cmd_show)

    p = group.add_parser(
        "list",
        parents=[common],
        help="messages matching filters, newest first, a page at a time",
        epilog="exit codes: 0 ok; 1 the journal is off or unreachable; 2 usage (a bad filter, named)",
    )
    p.add_argument("--status", help=f"one of {', '.join(s.value for s in Status)}")
    p.add_argument("--destination", help="destination id")
    p.add_argument("--partner", help="sending partner id")
    p.add_argument("--type", help="message type")
    p.add_argument("--since", help="received at or after (ISO-8601 with offset)")
    p.add_argument("--until", help="received before (ISO-8601 with offset)")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--limit", help=f"page size, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})")
    p.add_argument("--json", action="store_true", help="the admin API's JSON page")
    p.set_defaults(func=cmd_list)
