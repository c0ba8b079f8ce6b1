"""create_app(settings): the only place that builds and wires objects.

Nothing is bound at import time. One lifecycle mechanism (aiohttp cleanup_ctx) starts the
broker (publisher) connection, the delivery workers with their own consumer connection
(role "all" or "delivery") and the supervised queue-depth poller, and stops them in
reverse order on shutdown: delivery first, so in-flight deliveries finish (or are left
unacked) while the broker connection is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.broker.publisher import Broker
from gateway.delivery.connection import ConsumerConnection
from gateway.delivery.pool import Delivery
from gateway.inbox.api import InboxApi, Inboxes
from gateway.intake import rules
from gateway.intake.dedup.policy import Deduplicator
from gateway.intake.handler import Ingress
from gateway.intake.identity import Authenticator
from gateway.intake.limits import ConcurrencyGate, PartnerRateLimiter
from gateway.intake.routing import Router
from gateway.intake.signature import SignatureVerifier
from gateway.intake.status import StatusApi
from gateway.intake.validation import Validator
from gateway.journal.control import control_store
from gateway.journal.model import JournalReader, JournalWriter
from gateway.journal.service import Journal
from gateway.observability.metrics import Metrics, metrics_handler, request_timing_middleware
from gateway.observability.problems import problem_middleware
from gateway.operations.admin import AdminApi
from gateway.operations.console_api import ConsoleApi
from gateway.operations.pauses import Pauses
from gateway.receipts import KeyRing
from gateway.runtime import health, openapi
from gateway.settings.model import Settings
from gateway.supervise import spawn_supervised

Role = Literal["all", "ingress", "delivery"]

BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", Metrics)
VALIDATOR = web.AppKey("validator", Validator)
INGRESS = web.AppKey("ingress", Ingress)
DELIVERY = web.AppKey("delivery", Delivery)
ADMIN_APP = web.AppKey("admin_app", web.Application)
# The journal: JOURNAL is always set (a NullWriter when the journal is off); JOURNAL_READER only when it is on.
JOURNAL = web.AppKey("journal", JournalWriter)
JOURNAL_READER = web.AppKey("journal_reader", JournalReader)
DEPTH_POLL_S = 2.0


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    role: Role = "all",
    delivery_stop_timeout_s: float = 10.0,
) -> web.Application:
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    journal = Journal.from_settings(settings, metrics)  # also intake's store of seen ids
    validator = Validator.from_settings(settings, rules=rules.check)
    broker = Broker(settings, metrics)
    delivery = (
        Delivery(settings.destinations, broker, ConsumerConnection(settings.broker), metrics, journal=journal.writer)
        if role in ("all", "delivery")
        else None
    )
    # Pause/resume for every replica, through the journal's database (operations/pauses.py).
    pauses = Pauses(delivery, control_store(settings.dedup), settings.broker.replica_id)

    handler_args = {
        "max_line_size": settings.server.max_header_bytes,
        "max_field_size": settings.server.max_header_bytes,
        "keepalive_timeout": settings.server.idle_timeout_s,
    }
    app = web.Application(
        middlewares=[request_timing_middleware(metrics), problem_middleware],
        client_max_size=settings.server.max_body_bytes,
        # Partner security: bounded request line and header lines (400/431 above),
        # and a deadline to deliver a complete request head after connecting or after the
        # previous response, which also closes slowloris connections that trickle headers.
        handler_args=handler_args,
    )
    app[METRICS] = metrics
    app[BROKER] = broker
    app[VALIDATOR] = validator
    app[JOURNAL] = journal.writer
    inboxes = Inboxes(settings, broker, journal.writer, journal.reader, metrics)
    if journal.reader is not None:
        app[JOURNAL_READER] = journal.reader

    async def journal_lifespan(app: web.Application) -> AsyncIterator[None]:
        # First up, last down: delivery journals until it has stopped, the writer then flushes.
        await journal.start()
        yield
        await journal.close()

    app.cleanup_ctx.append(journal_lifespan)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await broker.start()
        if delivery is not None:
            await pauses.load(settings.dedup.timeout_s)  # a restarted replica comes up paused as the others are
            await delivery.start()  # its own connection; re-made after every loss, whoever started first
        pause_poller = spawn_supervised("pause-poller", pauses.run, metrics.task_restarts)
        after = (lambda: delivery.update_age_gauges(metrics)) if delivery is not None else None
        poller = spawn_supervised(
            "depth-poller", lambda: broker.poll_depths(DEPTH_POLL_S, after), metrics.task_restarts
        )
        inbox_poller = spawn_supervised(
            "inbox-depth-poller", lambda: inboxes.poll_depths(DEPTH_POLL_S), metrics.task_restarts
        )
        yield
        for task in (inbox_poller, poller, pause_poller):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if delivery is not None:
            await delivery.stop(delivery_stop_timeout_s)
        await pauses.close()
        await broker.close()

    app.cleanup_ctx.append(lifespan)

    # Signed receipts (gateway/receipts.py): the first key signs; all are published as a JWKS.
    receipt_keys = KeyRing.load(settings.receipts.signing_keys) if settings.receipts is not None else None
    jwks = receipt_keys.jwks() if receipt_keys is not None else {"keys": []}

    async def receipt_keys_view(_: web.Request) -> web.Response:
        return web.json_response(jwks, headers={"Cache-Control": "max-age=300"})

    if role in ("all", "ingress"):
        # The store of seen MessageIds, opened and closed with the app.
        dedup = Deduplicator.from_settings(
            settings.dedup,
            retry_after_s=settings.broker.retry_after_s,
            on_error=lambda operation: metrics.dedup_store_errors.labels(operation).inc(),
            on_late=lambda outcome: metrics.dedup_late_outcomes.labels(outcome).inc(),
            store=journal.store,  # the journal's: it starts, purges and closes it
            journal=journal.writer,  # duplicate and conflict events
        )

        async def dedup_lifespan(app: web.Application) -> AsyncIterator[None]:
            await dedup.start()
            yield
            await dedup.close()

        app.cleanup_ctx.append(dedup_lifespan)
        ingress = Ingress(
            settings,
            validator,
            Router(settings.routes),
            broker,
            metrics,
            auth=Authenticator(settings.partners),
            dedup=dedup,
            limiter=PartnerRateLimiter(settings.partners),
            gate=ConcurrencyGate(settings.server.max_concurrency),
            signatures=SignatureVerifier(settings.partners, config_file=str(settings.path)),
            receipts=receipt_keys,
        )
        app[INGRESS] = ingress

        async def post_message(request: web.Request) -> web.Response:
            return await ingress.handle(request)

        app.router.add_post("/v1/messages", post_message)
        # Where is my message: the partner's own credentials, its own bucket of lookups (intake/status.py).
        status = StatusApi(
            ingress.auth,
            PartnerRateLimiter(settings.partners),
            journal.reader,
            metrics,
            retry_after_s=settings.broker.retry_after_s,
            receipts=receipt_keys,
        )
        app.router.add_get("/v1/messages/{message_id}", status.handle)
        # Pull inboxes: the partner's own credentials, its own bucket of inbox requests (gateway/inbox/).
        inbox_api = InboxApi(
            inboxes,
            ingress.auth,
            PartnerRateLimiter(settings.partners),
            metrics,
            retry_after_s=settings.broker.retry_after_s,
        )
        app.router.add_get("/v1/inbox", inbox_api.pull)
        app.router.add_post("/v1/inbox/ack", inbox_api.ack)
        app.router.add_get("/v1/receipt-keys", receipt_keys_view)  # public keys: no credentials needed
    if delivery is not None:
        app[DELIVERY] = delivery

    async def readyz(_: web.Request) -> web.Response:
        detail = health.readiness(broker, validator, delivery.states if delivery is not None else None)
        return web.json_response(detail, status=200 if detail["ready"] else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        return await metrics_handler(request, metrics)

    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)

    admin_routes = AdminApi(
        settings, broker, delivery, metrics, reader=journal.reader, journal=journal.writer, pauses=pauses
    ).routes()
    admin_routes += ConsoleApi(settings, metrics, reader=journal.reader).routes()  # the ops console and its API
    if settings.admin.port is not None:  # separate listener: admin routes are not on the partner port
        admin_app = web.Application(
            middlewares=[request_timing_middleware(metrics), problem_middleware], handler_args=handler_args
        )
        admin_app.add_routes(admin_routes)
        admin_app.router.add_get("/metrics", metrics_view)
        admin_app.add_routes([openapi.view(openapi.document(partner_api=False, admin_api=True, health=False))])
        app[ADMIN_APP] = admin_app
    else:
        app.add_routes(admin_routes)
    # What this listener serves, described (gateway/runtime/openapi/): one port for both describes both.
    partner_api, admin_here = role in ("all", "ingress"), settings.admin.port is None
    app.add_routes([openapi.view(openapi.document(partner_api=partner_api, admin_api=admin_here, health=True))])
    return app
