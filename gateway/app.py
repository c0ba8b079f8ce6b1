"""create_app(settings): the only place that builds and wires objects.

Nothing is bound at import time. One lifecycle mechanism (aiohttp cleanup_ctx) starts the
broker connection and stops it on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import health, rules
from gateway.auth import Authenticator
from gateway.broker import Broker
from gateway.config import Settings
from gateway.dedup import Deduplicator
from gateway.ingress import Ingress
from gateway.metrics import Metrics, metrics_handler
from gateway.problems import problem_middleware
from gateway.routing import Router
from gateway.validation import Validator

BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", Metrics)
VALIDATOR = web.AppKey("validator", Validator)
INGRESS = web.AppKey("ingress", Ingress)


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    validator = Validator.from_settings(settings, rules=rules.check)
    broker = Broker(settings, metrics)
    # --- dedup: the store of seen MessageIds, opened and closed with the app ---
    dedup = Deduplicator.from_settings(settings.dedup, retry_after_s=settings.broker.retry_after_s)
    # --- end dedup ---
    ingress = Ingress(
        settings, validator, Router(settings.routes), broker, metrics, Authenticator(settings.partners), dedup
    )

    app = web.Application(
        middlewares=[problem_middleware],
        client_max_size=settings.server.max_body_bytes,
        # Partner security (issue 6): bounded request line and header lines (400/431 above),
        # and a deadline to deliver a complete request head after connecting or after the
        # previous response, which also closes slowloris connections that trickle headers.
        handler_args={
            "max_line_size": settings.server.max_header_bytes,
            "max_field_size": settings.server.max_header_bytes,
            "keepalive_timeout": settings.server.idle_timeout_s,
        },
    )
    app[METRICS] = metrics
    app[BROKER] = broker
    app[VALIDATOR] = validator
    app[INGRESS] = ingress

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await broker.start()
        yield
        await broker.close()

    app.cleanup_ctx.append(lifespan)

    # --- dedup ---
    async def dedup_lifespan(app: web.Application) -> AsyncIterator[None]:
        await dedup.start()
        yield
        await dedup.close()

    app.cleanup_ctx.append(dedup_lifespan)
    # --- end dedup ---

    async def post_message(request: web.Request) -> web.Response:
        return await ingress.handle(request)

    async def readyz(_: web.Request) -> web.Response:
        detail = health.readiness(broker, validator, None)
        return web.json_response(detail, status=200 if detail["ready"] else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        return await metrics_handler(request, metrics)

    app.router.add_post("/v1/messages", post_message)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
