"""The ops console: its pages, and the admin API routes only it needed (issue 16).

    GET /console                                  the console (index.html)
    GET /console/{name}                           its stylesheet and ES modules
    GET /admin/outages?since=&until=&destination= circuit open periods per destination in the window
    GET /admin/report?since=&until=&destination=  the outage report as JSON (`swgw report --format json`)
    GET /admin/report.csv?...same                 one row per message (`swgw report --format csv`), a download
    GET /admin/oldest-ages                        each destination's oldest undelivered message age, seconds

The `/admin/` routes need the admin token, like the rest of the admin API (admin.py); they
read the journal with report.py's queries, so the console and `swgw report` never disagree.
`since` and `until` are ISO-8601 with an offset (a bad or missing one is a 400 naming it).

The pages are served without the token: a browser cannot add an Authorization header to a
navigation, and the files hold no data, only the code that asks the admin API. The console
keeps the token in `sessionStorage` and sends it as a bearer header, so there is no cookie
and no CSRF surface (a cross-site form cannot set that header). Every page answer carries
strict headers (SECURITY_HEADERS): a CSP without inline script or style, no framing, no
referrer, no sniffing, and no native form submission (every form is handled by the script;
the token field has no name, so even a page whose script failed never puts it in a URL).
The files are package data (gateway/operations/console/), read once with importlib.resources.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.errors import InvalidQuery, JournalDisabled, JournalUnavailable, StoreError
from gateway.journal.model import JournalReader
from gateway.observability.metrics import Metrics
from gateway.operations import report
from gateway.operations.access import check_admin
from gateway.operations.messages import parse_window
from gateway.settings.model import Settings
from gateway.timeutil import iso_unix

CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
WINDOW_PARAMETERS = ("since", "until", "destination")
OLDEST_AGE = "swgw_destination_oldest_message_age_seconds"


def console_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of every page file the package ships."""
    folder = resources.files("gateway.operations").joinpath("console")
    out: dict[str, tuple[bytes, str]] = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in CONTENT_TYPES:
            out[item.name] = (item.read_bytes(), CONTENT_TYPES[suffix])
    return out


class ConsoleApi:
    """The routes above. `settings` names the destinations and the admin credential; `reader` is the
    journal's (None when it is off: the journal routes answer 404 journal_disabled); `metrics` holds
    the oldest-message-age gauge the delivery workers of this replica keep."""

    def __init__(self, settings: Settings, metrics: Metrics, reader: JournalReader | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.reader = reader
        self.files = console_files()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.page),
            web.get("/console/{name}", self.page),
            web.get("/admin/outages", self.outages),
            web.get("/admin/report", self.report_json),
            web.get("/admin/report.csv", self.report_csv),
            web.get("/admin/oldest-ages", self.oldest_ages),
        ]

    async def page(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in self.files:
            raise web.HTTPNotFound(text=f"the console has no file {name!r}")
        body, content_type = self.files[name]
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS)

    def _window(self, request: web.Request) -> tuple[JournalReader, float, float, str | None]:
        check_admin(request.headers.get("Authorization"), self.settings.admin)
        params: Mapping[str, str] = request.query
        unknown = sorted(set(params) - set(WINDOW_PARAMETERS))
        if unknown:
            raise InvalidQuery(unknown[0], f"not a parameter; use {', '.join(WINDOW_PARAMETERS)}")
        for name in ("since", "until"):
            if not params.get(name, "").strip():
                raise InvalidQuery(name, "required: an ISO-8601 date-time with an offset (e.g. 2026-11-23T08:00:00Z)")
        since, until = parse_window(params["since"], params["until"])
        destination = params.get("destination", "").strip() or None
        if destination is not None and destination not in self._destination_ids():
            raise InvalidQuery("destination", f"{destination!r} is not a destination of this gateway")
        if self.reader is None:
            raise JournalDisabled("This gateway keeps no message journal ([journal] enabled, [dedup] backend).")
        return self.reader, since, until, destination

    def _destination_ids(self) -> list[str]:
        return [d.id for d in self.settings.destinations]

    async def outages(self, request: web.Request) -> web.Response:
        reader, since, until, destination = self._window(request)
        now = time.time()
        try:
            events = await reader.destination_events(since, until, destination)
        except StoreError as exc:
            raise JournalUnavailable(f"The journal did not answer: {exc}", retry_after_s=2) from exc
        periods = report.open_periods(events, since, until, now)
        ids = [destination] if destination else sorted(set(self._destination_ids()) | set(periods))
        return web.json_response(
            {
                "since": iso_unix(since),
                "until": iso_unix(until),
                "as_of": iso_unix(now),
                "destinations": [{"id": d, "open": [p.as_json() for p in periods.get(d, [])]} for d in ids],
            }
        )

    async def report_json(self, request: web.Request) -> web.Response:
        reader, since, until, destination = self._window(request)
        try:
            built = await report.build(reader, since, until, destination)
        except StoreError as exc:
            raise JournalUnavailable(f"The journal did not answer: {exc}", retry_after_s=2) from exc
        return web.json_response(built.as_json())

    async def report_csv(self, request: web.Request) -> web.Response:
        # Built in memory before the first byte, so a journal failure is still a clean 503 (a
        # day of 25,000 messages is about 3 MB); `swgw report --format csv` streams for larger windows.
        reader, since, until, destination = self._window(request)
        out = io.StringIO()
        try:
            await report.write_csv(reader, since, until, destination, out)
        except StoreError as exc:
            raise JournalUnavailable(f"The journal did not answer: {exc}", retry_after_s=2) from exc
        stamp = str(iso_unix(since)).replace(":", "")
        scope = f"-{destination}" if destination else ""
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="swgw-report{scope}-{stamp}.csv"'},
        )

    async def oldest_ages(self, request: web.Request) -> web.Response:
        """This replica's gauge (updated with the queue depths, every 2 s); null where it has none."""
        check_admin(request.headers.get("Authorization"), self.settings.admin)
        rows: list[dict[str, Any]] = []
        for dest in self._destination_ids():
            age = self.metrics.registry.get_sample_value(OLDEST_AGE, {"destination": dest})
            rows.append({"id": dest, "oldest_age_s": None if age is None else round(age, 3)})
        return web.json_response({"destinations": rows})
