"""The journal's read side for ops on real SQLite and PostgreSQL: filters, the report's counters and
circuit periods, reconciliation's id files. Events are written straight to the store here; the
integration tests (tests/integration/test_journal_read.py) read what a running gateway journaled."""

from __future__ import annotations

import asyncio
import io
import tracemalloc
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.errors import InvalidQuery
from gateway.journal.model import Event, EventKind, MessageFilter, MessageRecord, Page, Status
from gateway.journal.store import WINDOW_CHUNK
from gateway.operations import messages, reconcile, report
from gateway.progress import Progress
from gateway.timeutil import iso_unix
from tests.fakes import FakeTTY
from tests.unit.journal.stores import T0, Stores, arrival, queued

DELIVERED, PARKED = EventKind.DELIVERED, EventKind.PARKED


def ev(kind: EventKind, at: float, message_id: str = "", **kw: object) -> Event:
    sender = str(kw.pop("sender", "VN-NSW" if message_id else ""))
    return Event(kind, at, sender=sender, message_id=message_id, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "lost"}, "status"),
        ({"since": "2026-11-23T08:00:00"}, "since"),  # no offset: whose 08:00?
        ({"until": "yesterday"}, "until"),
        ({"since": "2026-11-23T09:00:00Z", "until": "2026-11-23T08:00:00Z"}, "until"),
        ({"cursor": "not-ours"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"sender": "VN-NSW"}, "sender"),  # the filter is `partner`: a typo must not widen the search
    ],
)
def test_a_bad_filter_names_its_parameter(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        messages.parse_query(params)
    assert caught.value.parameter == parameter
    assert caught.value.status == 400
    assert caught.value.problems[0].path == parameter


def test_filters_become_a_message_filter_and_empty_ones_mean_any() -> None:
    q = messages.parse_query(
        {"status": "parked", "partner": "VN-NSW", "type": "", "since": "2027-01-15T15:00:00+07:00", "limit": "5"}
    )
    assert q.filter == MessageFilter(status=Status.PARKED, sender="VN-NSW", since=T0)
    assert (q.cursor, q.limit) == (None, 5)


def test_open_periods_clip_at_the_window_and_half_open_is_still_the_outage() -> None:
    since, until = T0, T0 + 3600

    def circuit(at: float, state: str, dest: str = "vnaccs") -> Event:
        return Event(EventKind.CIRCUIT, at, destination=dest, detail=state)

    events = [
        circuit(since - 600, "open"),  # the last one before the window: it starts open
        circuit(since + 60, "half_open"),
        circuit(since + 61, "open"),
        circuit(since + 300, "closed"),
        circuit(since + 1000, "open"),
        circuit(since + 1010, "half_open"),
        circuit(since + 1020, "closed"),
        circuit(since + 3000, "open"),  # still open when the window ends
        circuit(since - 50, "closed", "asean"),
    ]
    periods = report.open_periods(sorted(events, key=lambda e: e.at), since, until, now=until + 99)
    got = [(p.opened - since, p.closed - since, p.clipped_start, p.clipped_end) for p in periods["vnaccs"]]
    assert got == [(0, 300, True, False), (1000, 1020, False, False), (3000, 3600, False, True)]
    assert periods["asean"] == []  # known, closed all along
    still = report.open_periods([circuit(since + 3000, "open")], since, until, now=since + 3100)
    assert still["vnaccs"][0].closed == since + 3100  # a window reaching into the future ends now


async def test_report_counts_by_destination_and_type_with_duplicates_and_the_longest_delivery(stores: Stores) -> None:
    store = await stores.started()
    for i, (dest, mtype) in enumerate([("vnaccs", "CUSDEC")] * 4 + [("vnaccs", "CUSCAR"), ("asean", "ECOO")]):
        await queued(store, arrival(f"R-{i}", destination=dest, message_type=mtype, received=T0 + i))
    await queued(store, arrival("BEFORE", received=T0 - 10))  # received before the window
    await store.write(
        [
            ev(EventKind.ATTEMPT, T0 + 50, "R-0", destination="vnaccs", error="refused"),
            ev(DELIVERED, T0 + 100, "R-0", destination="vnaccs", status=200),
            ev(DELIVERED, T0 + 700, "R-1", destination="vnaccs", status=200),  # 699 s: the longest
            ev(PARKED, T0 + 30, "R-2", destination="vnaccs", error="rejected"),
            ev(DELIVERED, T0 + 10, "R-5", destination="asean", status=200),
            ev(EventKind.DUPLICATE, T0 + 20, "R-0", destination="vnaccs"),
            ev(EventKind.DUPLICATE, T0 + 21, "BEFORE", destination="vnaccs"),  # a re-send in the window counts
            ev(EventKind.CONFLICT, T0 + 22, "R-5", destination="asean"),
            ev(EventKind.CIRCUIT, T0 + 5, destination="vnaccs", detail="open"),
            ev(EventKind.CIRCUIT, T0 + 65, destination="vnaccs", detail="closed"),
        ]
    )
    r = await report.build(store, T0, T0 + 3600, now=T0 + 3600)
    c = r.groups[("vnaccs", "CUSDEC")]
    assert (c.received, c.delivered, c.parked, c.pending, c.duplicates, c.conflicts) == (4, 2, 1, 1, 2, 0)
    assert c.longest_s == pytest.approx(699, abs=0.01)
    assert c.longest_message_id == "R-1"
    assert (r.groups[("vnaccs", "CUSCAR")].received, r.groups[("vnaccs", "CUSCAR")].pending) == (1, 1)
    a = r.groups[("asean", "ECOO")]
    assert (a.received, a.delivered, a.conflicts) == (1, 1, 1)
    assert [(p.opened, p.closed) for p in r.circuit["vnaccs"]] == [(T0 + 5, T0 + 65)]
    assert r.as_json()["total"]["received"] == 6

    text = io.StringIO()
    report.write_text(r, text)
    assert "circuit open 2027-01-15T08:00:05.000Z .. 2027-01-15T08:01:05.000Z  1m00s" in text.getvalue()
    assert "  CUSDEC            4         2      1       1     2      0  11m39s (R-1)" in text.getvalue()

    only = await report.build(store, T0, T0 + 3600, "asean", now=T0 + 3600)
    assert set(only.groups) == {("asean", "ECOO")}
    assert only.circuit == {}

    out = io.StringIO()
    assert await report.write_csv(store, T0, T0 + 3600, "vnaccs", out) == 5
    lines = out.getvalue().splitlines()
    assert lines[0] == "message_id,sender,message_type,destination,status,received_at,delivered_at,attempts"
    assert lines[1] == f"R-0,VN-NSW,CUSDEC,vnaccs,delivered,{iso_unix(T0)},{iso_unix(T0 + 100)},1"
    assert lines[3] == f"R-2,VN-NSW,CUSDEC,vnaccs,parked,{iso_unix(T0 + 2)},,0"


def test_backend_ids_one_per_line_with_bom_blanks_crlf_and_repeats() -> None:
    ids = reconcile.parse_ids(io.StringIO("\ufeffA-1\r\n\r\n  A-2  \nA-1\n\n", newline=None))
    assert (ids.ids, ids.listed, ids.repeated, ids.format) == ({"A-1", "A-2"}, 3, 1, "lines")


def test_backend_ids_from_csv_take_the_message_id_column_wherever_it_is() -> None:
    text = '\ufeffreceived,Message_ID,note\n2027-01-15,A-1,"x, y"\n2027-01-15,,empty\n2027-01-16,A-2,\n'
    ids = reconcile.parse_ids(io.StringIO(text))
    assert (ids.ids, ids.listed, ids.format) == ({"A-1", "A-2"}, 2, "csv")
    with pytest.raises(reconcile.BadIdFile, match="without a 'message_id' column"):
        reconcile.parse_ids(io.StringIO("id,received\nA-1,x\n"))
    with pytest.raises(reconcile.BadIdFile, match="row 3 has no message_id"):
        reconcile.parse_ids(io.StringIO("note,message_id\nx,A-1\nshort\n"))


async def test_reconcile_compares_delivered_ids_with_the_backends(stores: Stores) -> None:
    store = await stores.started()
    for i in range(4):
        await queued(store, arrival(f"D-{i}", received=T0 + i))
    await queued(store, arrival("ELSEWHERE", destination="asean", received=T0))
    await store.write([ev(DELIVERED, T0 + 9, f"D-{i}", destination="vnaccs") for i in (0, 1, 2)])
    await store.write([ev(DELIVERED, T0 + 9, "ELSEWHERE", destination="asean")])
    backend = reconcile.parse_ids(io.StringIO("D-0\nD-1\nD-3\nELSEWHERE\nX-9\n"))
    r = await reconcile.reconcile(store, "vnaccs", T0, T0 + 60, backend)
    assert (r.delivered, r.missing_at_backend, r.unknown_to_gateway) == (3, ["D-2"], ["D-3", "ELSEWHERE", "X-9"])
    assert r.gateway_status == {"D-3": "queued"}  # listed by the backend, never delivered by the gateway
    assert not r.equal
    same = await reconcile.reconcile(store, "vnaccs", T0, T0 + 60, reconcile.parse_ids(["D-0", "D-1", "D-2"]))
    assert same.equal


async def test_the_report_streams_the_window_chunk_by_chunk(stores: Stores) -> None:
    store = await stores.started()
    n = 2 * WINDOW_CHUNK + 7  # three keyset chunks, the last one short
    ids = [f"C-{i:05d}" for i in range(n)]
    await asyncio.gather(*(queued(store, arrival(mid, received=T0 + i / 100)) for i, mid in enumerate(ids)))
    await store.write([ev(DELIVERED, T0 + 100, mid, destination="vnaccs") for mid in ids[::2]])
    c = (await report.build(store, T0, T0 + 3600, now=T0 + 3600)).groups[("vnaccs", "CUSDEC")]
    assert (c.received, c.delivered, c.pending) == (n, (n + 1) // 2, n // 2)
    out = io.StringIO()
    assert await report.write_csv(store, T0, T0 + 3600, None, out) == n
    assert [line.split(",")[0] for line in out.getvalue().splitlines()[1:]] == ids  # oldest first, none twice


async def test_the_report_shows_messages_read_on_a_terminal_only(stores: Stores) -> None:
    store = await stores.started()
    await asyncio.gather(*(queued(store, arrival(f"P-{i}", received=T0 + i)) for i in range(30)))
    tty = FakeTTY()
    with Progress("report: messages read", stream=tty, min_interval_s=0) as shown:
        await report.build(store, T0, T0 + 3600, now=T0 + 3600, progress=shown.update)
    frames = tty.getvalue().split("\r\033[K")[1:]
    assert len(frames) == 30
    assert frames[-1].startswith("report: messages read: 30  ")
    assert frames[-1].endswith("/s\n")  # a rate; no time left, the window's size is not known
    piped, out = io.StringIO(), io.StringIO()
    with Progress("report", stream=piped, min_interval_s=0) as shown:
        assert await report.write_csv(store, T0, T0 + 3600, None, out, shown.update) == 30
    assert (piped.getvalue(), shown.done) == ("", 30)


class Day:
    """A reader whose window makes `n` records one at a time and keeps none: what the report holds is its own."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def window(self, since: float, until: float, destination: str | None = None) -> AsyncIterator[MessageRecord]:
        for i in range(self.n):
            at = iso_unix(since + i) or ""
            yield MessageRecord(
                "VN-NSW", f"NSW-2026-{i:06d}", ("CUSDEC", "CUSCAR")[i % 2], "VN-VNACCS", "vnaccs", 7548,
                f"{i:064x}", at, Status.DELIVERED, 1, iso_unix(since + i + 5), None, at,
            )  # fmt: skip

    async def events(
        self, since: float, until: float, *, kinds: Sequence[EventKind] | None = None, destination: str | None = None
    ) -> AsyncIterator[Event]:
        for _ in ():
            yield _

    async def destination_events(self, since: float, until: float, destination: str | None = None) -> list[Event]:
        return []

    async def message(self, sender: str, message_id: str) -> MessageRecord | None:
        return None

    async def history(self, sender: str, message_id: str) -> list[Event]:
        return []

    async def search(self, flt: MessageFilter, *, cursor: str | None = None, limit: int = 100) -> Page:
        return Page([], None)


async def test_a_day_of_25000_messages_costs_the_report_its_counters_not_its_records() -> None:
    tracemalloc.start()
    try:
        r = await report.build(Day(25_000), T0, T0 + 86_400, now=T0 + 86_400)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(t, c.received, c.delivered) for (_, t), c in sorted(r.groups.items())] == [
        ("CUSCAR", 12_500, 12_500),
        ("CUSDEC", 12_500, 12_500),
    ]
    assert peak < 200_000  # 25,000 records held would be well over 10 MB
