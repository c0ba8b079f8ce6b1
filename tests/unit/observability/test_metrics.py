"""Request timing: the label set stays bounded whatever paths clients send."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.observability.metrics import Metrics, request_timing_middleware


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, str]]:
    metrics = Metrics(CollectorRegistry())

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info.get("id")}, status=202)

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app = web.Application(middlewares=[request_timing_middleware(metrics)])
    app.router.add_post("/v1/messages", ok)
    app.router.add_post("/admin/destinations/{id}/pause", ok)
    app.router.add_get("/gone", missing)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield metrics, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def _count(metrics: Metrics, route: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "swgw_http_request_duration_seconds_count", {"route": route, "code": code}
    )
    return 0.0 if value is None else value


async def test_requests_are_timed_by_route_pattern_and_status(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/messages", "/admin/destinations/vnaccs/pause", "/admin/destinations/ecoo/pause"):
            async with session.post(url + path) as resp:
                assert resp.status == 202
        for path in ("/gone", "/broken", "/wp-login.php", "/etc/passwd?x=1"):
            async with session.get(url + path) as resp:
                await resp.read()

    assert _count(metrics, "/v1/messages", "202") == 1
    assert _count(metrics, "/admin/destinations/{id}/pause", "202") == 2  # one series, not one per id
    assert _count(metrics, "/gone", "404") == 1
    assert _count(metrics, "/broken", "500") == 1
    assert _count(metrics, "(unmatched)", "404") == 2
    routes = {
        s.labels["route"]
        for family in metrics.registry.collect()
        if family.name == "swgw_http_request_duration_seconds"
        for s in family.samples
    }
    assert routes == {"/v1/messages", "/admin/destinations/{id}/pause", "/gone", "/broken", "(unmatched)"}
