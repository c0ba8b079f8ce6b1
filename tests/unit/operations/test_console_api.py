"""The console's pages and API routes on a real listener with a stand-in journal.

The pages: strict security headers, only the shipped files. The API: the admin token on
every route (401 without it, as the console's own calls get), the window's checks (each
bad parameter named), the outage timeline and the report as JSON and CSV from report.py's
queries, the journal off (404) or failing (503).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gateway.errors import StoreError
from gateway.journal.model import Event, EventKind, JournalReader, MessageRecord, Status
from gateway.observability.metrics import Metrics
from gateway.observability.problems import problem_middleware
from gateway.operations.console_api import CSP, ConsoleApi
from gateway.timeutil import parse_iso
from tests.helpers import ADMIN_TOKEN, TOKEN, config_doc, fast_destination, write_settings

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WINDOW = {"since": "2027-01-15T08:00:00Z", "until": "2027-01-15T10:00:00Z"}


def at(text: str) -> float:
    return parse_iso(text).timestamp()


def record(message_id: str, status: Status, received: str, delivered: str | None = None) -> MessageRecord:
    return MessageRecord(
        sender="VN-NSW",
        message_id=message_id,
        message_type="CUSDEC",
        receiver="VN-VNACCS",
        destination="vnaccs",
        size=10,
        sha256="ab",
        received_at=received,
        status=status,
        attempts=2,
        delivered_at=delivered,
        parked_reason=None,
        updated_at=received,
    )


class Journal:
    """Two messages and one outage of vnaccs (08:30 to 08:45) in the window; `broken` fails every query."""

    def __init__(self) -> None:
        self.broken = False
        self.records = [
            record("C-1", Status.DELIVERED, "2027-01-15T08:20:00.000Z", "2027-01-15T08:50:00.000Z"),
            record("C-2", Status.PARKED, "2027-01-15T08:40:00.000Z"),
        ]
        self.circuit = [
            Event(EventKind.CIRCUIT, at("2027-01-15T08:30:00Z"), destination="vnaccs", detail="open"),
            Event(EventKind.CIRCUIT, at("2027-01-15T08:35:00Z"), destination="vnaccs", detail="half_open"),
            Event(EventKind.CIRCUIT, at("2027-01-15T08:45:00Z"), destination="vnaccs", detail="closed"),
        ]

    def _check(self) -> None:
        if self.broken:
            raise StoreError("database is locked")

    async def window(self, since: float, until: float, destination: str | None = None) -> AsyncIterator[MessageRecord]:
        self._check()
        for r in self.records:
            if since <= at(r.received_at) < until and destination in (None, r.destination):
                yield r

    async def destination_events(self, since: float, until: float, destination: str | None = None) -> list[Event]:
        self._check()
        return [e for e in self.circuit if e.at < until and destination in (None, e.destination)]

    async def events(
        self, since: float, until: float, *, kinds: Sequence[EventKind] | None = None, destination: str | None = None
    ) -> AsyncIterator[Event]:
        self._check()
        for e in ():
            yield e

    async def message(self, sender: str, message_id: str) -> MessageRecord | None:
        return None


async def client_for(tmp_path: Path, reader: Journal | None) -> Client:
    sim = type("Sim", (), {"url": "http://127.0.0.1:9/in", "port": 9})()
    doc = config_doc("console-test", destinations=[fast_destination("vnaccs", sim), fast_destination("ecoo", sim)])
    metrics = Metrics(CollectorRegistry())
    metrics.oldest_age.labels("vnaccs").set(12.5)
    api = ConsoleApi(write_settings(tmp_path, doc), metrics, reader=cast(JournalReader | None, reader))
    app = web.Application(middlewares=[problem_middleware])
    app.add_routes(api.routes())
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
async def client(tmp_path: Path, journal: Journal) -> AsyncIterator[Client]:
    c = await client_for(tmp_path, journal)
    yield c
    await c.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/pages.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ],
)
async def test_the_pages_carry_strict_security_headers(client: Client, path: str, content_type: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == content_type
    csp = resp.headers["Content-Security-Policy"]
    assert csp == CSP
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "form-action 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in resp.headers


async def test_only_the_shipped_files_are_served(client: Client) -> None:
    for path in ("/console/nope.js", "/console/..%2Fconsole_api.py", "/console/__init__.py"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert resp.content_type == "application/problem+json"


CONSOLE_CALLS = [
    "/admin/outages?since=2027-01-15T08:00:00Z&until=2027-01-15T10:00:00Z",
    "/admin/report?since=2027-01-15T08:00:00Z&until=2027-01-15T10:00:00Z",
    "/admin/report.csv?since=2027-01-15T08:00:00Z&until=2027-01-15T10:00:00Z",
    "/admin/oldest-ages",
]


@pytest.mark.parametrize("path", CONSOLE_CALLS)
async def test_the_console_api_needs_the_admin_token(client: Client, path: str) -> None:
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer wrong"}):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401, headers
        assert resp.content_type == "application/problem+json"
    assert (await client.get(path, headers=AUTH)).status == 200


async def test_the_outage_timeline_is_the_circuit_open_periods(client: Client) -> None:
    resp = await client.get("/admin/outages", params=WINDOW, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert (body["since"], body["until"]) == ("2027-01-15T08:00:00.000Z", "2027-01-15T10:00:00.000Z")
    by_id = {d["id"]: d["open"] for d in body["destinations"]}
    assert by_id["ecoo"] == []  # every destination has its row, outage or not
    assert by_id["vnaccs"] == [
        {
            "opened_at": "2027-01-15T08:30:00.000Z",
            "closed_at": "2027-01-15T08:45:00.000Z",  # half open is still the same outage
            "duration_s": 900.0,
            "open_before_window": False,
            "still_open": False,
        }
    ]
    one = await (await client.get("/admin/outages", params={**WINDOW, "destination": "ecoo"}, headers=AUTH)).json()
    assert one["destinations"] == [{"id": "ecoo", "open": []}]


async def test_the_report_as_json_counts_by_status_now(client: Client) -> None:
    resp = await client.get("/admin/report", params=WINDOW, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["total"]["received"] == 2
    (group,) = body["groups"]
    assert (group["destination"], group["message_type"]) == ("vnaccs", "CUSDEC")
    assert (group["delivered"], group["parked"], group["longest_message_id"]) == (1, 1, "C-1")
    assert group["longest_s"] == 1800.0
    assert body["circuit_open"]["vnaccs"][0]["duration_s"] == 900.0


async def test_the_report_as_csv_is_a_download_of_one_row_per_message(client: Client) -> None:
    resp = await client.get("/admin/report.csv", params=WINDOW, headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="swgw-report-2027-01-15T080000.000Z.csv"'
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [(r["message_id"], r["status"], r["delivered_at"]) for r in rows] == [
        ("C-1", "delivered", "2027-01-15T08:50:00.000Z"),
        ("C-2", "parked", ""),
    ]


async def test_oldest_ages_are_this_replicas_gauge(client: Client) -> None:
    body = await (await client.get("/admin/oldest-ages", headers=AUTH)).json()
    assert body == {"destinations": [{"id": "vnaccs", "oldest_age_s": 12.5}, {"id": "ecoo", "oldest_age_s": None}]}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"until": WINDOW["until"]}, "since"),
        ({"since": WINDOW["since"]}, "until"),
        ({"since": "yesterday", "until": WINDOW["until"]}, "since"),
        ({"since": "2027-01-15T08:00:00", "until": WINDOW["until"]}, "since"),  # no offset
        ({"since": WINDOW["until"], "until": WINDOW["since"]}, "until"),
        ({**WINDOW, "destination": "nowhere"}, "destination"),
        ({**WINDOW, "limit": "5"}, "limit"),
    ],
)
@pytest.mark.parametrize("path", ["/admin/outages", "/admin/report", "/admin/report.csv"])
async def test_a_bad_window_is_a_400_naming_the_parameter(
    client: Client, path: str, params: dict[str, str], named: str
) -> None:
    resp = await client.get(path, params=params, headers=AUTH)
    assert resp.status == 400
    problem = await resp.json(content_type=None)
    assert problem["reason"] == "bad_parameter"
    assert problem["errors"][0]["path"] == named


@pytest.mark.parametrize("path", ["/admin/outages", "/admin/report", "/admin/report.csv"])
async def test_a_journal_that_is_off_or_failing_is_said_so(tmp_path: Path, journal: Journal, path: str) -> None:
    off = await client_for(tmp_path, None)
    try:
        resp = await off.get(path, params=WINDOW, headers=AUTH)
        assert resp.status == 404
        assert (await resp.json(content_type=None))["reason"] == "journal_disabled"
    finally:
        await off.close()
    journal.broken = True
    failing = await client_for(tmp_path, journal)
    try:
        resp = await failing.get(path, params=WINDOW, headers=AUTH)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
    finally:
        await failing.close()


def test_the_console_is_served_where_the_admin_api_is(tmp_path: Path) -> None:
    """With `[admin] port` the console is on the admin listener only; without it, on the one port."""
    from gateway.runtime.app import ADMIN_APP, create_app

    def paths(app: web.Application) -> set[str]:
        return {r.resource.canonical for r in app.router.routes() if r.resource is not None}

    shared = create_app(write_settings(tmp_path, config_doc("console-test")))
    assert {"/console", "/console/{name}", "/admin/report.csv"} <= paths(shared)
    doc = config_doc("console-test")
    doc["admin"]["port"] = 9791
    app = create_app(write_settings(tmp_path, doc))
    assert not any(p.startswith(("/console", "/admin/")) for p in paths(app))
    assert {"/console", "/console/{name}", "/admin/outages", "/admin/oldest-ages"} <= paths(app[ADMIN_APP])
