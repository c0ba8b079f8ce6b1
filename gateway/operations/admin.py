"""Admin HTTP API for ops: destination state, pause/resume, parked listing and replay.

Every route needs `Authorization: Bearer <admin token>`, whose sha256 is `[admin]
token_sha256` (or env SWGW_ADMIN_TOKEN_SHA256). Partner tokens never satisfy it. With no
admin token configured the API answers 403 to everyone rather than being open.

    GET  /admin/destinations                         state, circuit, backlog, parked, last delivery
    POST /admin/destinations/{id}/pause              stop taking messages (in-flight finish), on every
                                                     replica (the shared pause state, pauses.py)
    POST /admin/destinations/{id}/resume
    GET  /admin/destinations/{id}/parked?limit=&type=&from=&message_id=&since=&until=
    POST /admin/destinations/{id}/replay             JSON: same filters + rate, dry_run, timeout_s
    GET  /admin/messages/{sender}/{message_id}       the journal's record and full history
    GET  /admin/messages?status=&destination=&partner=&type=&since=&until=&cursor=&limit=
                                                     a page of records, newest first, next_cursor
                                                     (gateway/operations/messages.py; a bad
                                                     filter is a 400 naming it)

A replay answers 409 problem+json (`replay_in_progress`) at once while another replay of the
same destination runs anywhere (another gateway, `swgw replay`); see gateway/operations/replay.py.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from gateway.broker.publisher import Broker
from gateway.delivery.pool import Delivery
from gateway.errors import InvalidMessage, JournalDisabled, JournalUnavailable, MessageNotFound, StoreError
from gateway.journal.model import JournalReader, JournalWriter
from gateway.observability.metrics import Metrics
from gateway.operations import messages, replay
from gateway.operations.access import check_admin
from gateway.operations.pauses import Pauses
from gateway.settings.model import Settings


def _timeout(params: dict[str, Any]) -> float:
    value = params.get("timeout_s", replay.DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"Bad replay request: timeout_s: {value!r} must be a number", reason="bad_filter")
    try:
        return replay.check_timeout(float(value))
    except ValueError as exc:
        raise InvalidMessage(f"Bad replay request: {exc}", reason="bad_filter") from exc


def _filter(params: dict[str, Any]) -> replay.ReplayFilter:
    try:
        limit = params.get("limit")
        return replay.ReplayFilter(
            since=replay.parse_time(params.get("since")),
            until=replay.parse_time(params.get("until")),
            message_type=params.get("type") or None,
            sender=params.get("from") or None,
            message_id=params.get("message_id") or None,
            limit=int(limit) if limit not in (None, "") else None,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidMessage(f"Bad replay filter: {exc}", reason="bad_filter") from exc


class AdminApi:
    """The routes above. `settings` names the destinations, the admin credential and the broker replay uses;
    `reader` is the journal's (None when it is off: the message routes answer 404 journal_disabled)."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        delivery: Delivery | None,
        metrics: Metrics,
        reader: JournalReader | None = None,
        journal: JournalWriter | None = None,
        pauses: Pauses | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.delivery = delivery
        self.metrics = metrics
        self.reader = reader
        self.journal = journal  # replays journal `replayed` events here
        self.pauses = pauses  # pause/resume for every replica (pauses.py); None: this process only

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/destinations", self.destinations),
            web.post("/admin/destinations/{id}/pause", self.pause),
            web.post("/admin/destinations/{id}/resume", self.resume),
            web.get("/admin/destinations/{id}/parked", self.parked),
            web.post("/admin/destinations/{id}/replay", self.replay),
            web.get("/admin/messages", self.message_search),
            web.get("/admin/messages/{sender}/{message_id}", self.message_history),
        ]

    def _auth(self, request: web.Request) -> str:
        check_admin(request.headers.get("Authorization"), self.settings.admin)
        dest = request.match_info.get("id", "")
        if dest and dest not in {d.id for d in self.settings.destinations}:
            raise web.HTTPNotFound(text=f"unknown destination {dest!r}")
        return dest

    async def destinations(self, request: web.Request) -> web.Response:
        self._auth(request)
        depths = self.broker.depths  # the last poll's...
        if self.broker.ready:  # ...or fresh ones for a person asking (O(destinations) passive declares)
            with contextlib.suppress(Exception):
                depths = await self.broker.queue_depths()
        if self.delivery is not None:
            rows = list(self.delivery.states(depths).values())
        else:  # ingress-only replica: queue depths are still known from the broker
            rows = [
                {"id": d, "state": "unknown (no delivery here)", "backlog": b, "parked": p}
                for d, (b, p) in depths.items()
            ]
        return web.json_response({"destinations": rows})

    def _worker(self, dest: str) -> Any:
        if self.delivery is None:
            raise web.HTTPConflict(text="this replica runs no delivery workers (--role ingress)")
        if dest not in self.delivery.workers:  # a pull inbox (kind = "inbox"): its partner fetches, no worker
            raise web.HTTPConflict(text=f"{dest} is a pull inbox: it has no delivery worker to pause or resume")
        return self.delivery.workers[dest]

    async def pause(self, request: web.Request) -> web.Response:
        dest = self._auth(request)
        worker = self._worker(dest)
        await self._decide(dest, True, worker)
        return web.json_response({"id": dest, "state": "paused", "scope": self._scope()})

    async def resume(self, request: web.Request) -> web.Response:
        dest = self._auth(request)
        worker = self._worker(dest)
        await self._decide(dest, False, worker)
        return web.json_response({"id": dest, "state": worker.state, "scope": self._scope()})

    async def _decide(self, dest: str, paused: bool, worker: Any) -> None:
        """Through the shared pause state when there is one (pauses.py): every replica follows it."""
        if self.pauses is None:
            await (worker.pause() if paused else worker.resume())
            return
        verb = "pause" if paused else "resume"
        try:
            await self.pauses.set(dest, paused, f"admin api: POST /admin/destinations/{dest}/{verb}")
        except StoreError as exc:
            raise JournalUnavailable(
                f"The shared pause state did not answer ({exc}); nothing changed: a {verb} must reach every replica.",
                retry_after_s=2,
            ) from exc

    def _scope(self) -> str:
        return "all replicas" if self.pauses is not None and self.pauses.shared else "this replica"

    async def parked(self, request: web.Request) -> web.Response:
        dest = self._auth(request)
        params = dict(request.query)
        params.setdefault("limit", "100")
        rows = await replay.browse(self.settings, dest, _filter(params))
        return web.json_response({"id": dest, "parked": [asdict(r) for r in rows]})

    async def replay(self, request: web.Request) -> web.Response:
        dest = self._auth(request)
        try:
            # JSON is UTF-8 (RFC 8259): the bytes, never the Content-Type's charset, which may be
            # malformed or unknown (aiohttp's request.json() then raised IndexError / LookupError: a 500)
            params = json.loads(await request.read()) if request.can_read_body else {}
        except ValueError as exc:
            raise InvalidMessage(f"The replay request body is not JSON: {exc}", reason="bad_filter") from exc
        if not isinstance(params, dict):
            raise InvalidMessage("The replay request body must be a JSON object.", reason="bad_filter")
        rate = params.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0):
            raise InvalidMessage(f"Bad replay request: rate: {rate!r} must be a number >= 0", reason="bad_filter")
        report = await replay.replay(
            self.settings,
            dest,
            _filter(params),
            rate_per_s=float(rate) if rate else None,
            dry_run=bool(params.get("dry_run", False)),
            timeout_s=_timeout(params),
            metrics=self.metrics,
            journal=self.journal,
            action=f"admin api: POST /admin/destinations/{dest}/replay",
        )
        return web.json_response(
            {
                "id": dest,
                "dry_run": report.dry_run,
                "present": report.present,
                "scanned": report.scanned,
                "replayed": report.replayed,
                "skipped": report.skipped,
                "unread": report.unread,
                "failed": report.failed,
                "timed_out": report.timed_out,
                "timeout_s": report.timeout_s,
                "messages": [asdict(r) for r in report.selected[:1000]],
            }
        )

    def _reader(self) -> JournalReader:
        if self.reader is None:
            raise JournalDisabled("This gateway keeps no message journal ([journal] enabled, [dedup] backend).")
        return self.reader

    async def message_history(self, request: web.Request) -> web.Response:
        self._auth(request)
        sender, message_id = request.match_info["sender"], request.match_info["message_id"]
        try:
            found = await messages.show(self._reader(), sender, message_id)
        except StoreError as exc:
            raise JournalUnavailable(f"The journal did not answer: {exc}", retry_after_s=2) from exc
        if found is None:
            raise MessageNotFound(f"The journal has no message {message_id!r} from {sender!r}.")
        return web.json_response(found)

    async def message_search(self, request: web.Request) -> web.Response:
        self._auth(request)
        query = messages.parse_query(dict(request.query))
        try:
            page = await messages.search(self._reader(), query)
        except StoreError as exc:
            raise JournalUnavailable(f"The journal did not answer: {exc}", retry_after_s=2) from exc
        return web.json_response(page)
