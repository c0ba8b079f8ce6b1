"""gateway.delivery.sender: what a POST's answer means, and when a probe says "up"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.delivery.sender import Sender
from gateway.errors import PermanentDeliveryError, TransientDeliveryError
from gateway.messages import QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination

MSG = QueuedMessage("M-1", None, "CUSDEC", "VN-NSW", "VN-VNACCS", "d", "2026-12-01T00:00:00.000Z", b"<x/>")


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """GET /health and POST /in answer the status set in `answers`."""
    answers = {"health": 200, "post": 200}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=answers["health"])

    async def post(_: web.Request) -> web.Response:
        return web.Response(status=answers["post"], text="backend says no")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/in", post)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", answers
    await runner.cleanup()


async def with_sender(base: str, fn: Callable[[Sender], object], **dest: object) -> object:
    sender = Sender(Destination(id="d", url=f"{base}/in", **dest), Metrics(CollectorRegistry()))  # type: ignore[arg-type]
    await sender.start()
    try:
        return await fn(sender)  # type: ignore[misc]
    finally:
        await sender.close()


@pytest.mark.parametrize(("status", "up"), [(200, True), (204, True), (405, False), (404, False), (301, False)])
async def test_only_2xx_probe_answers_count_as_up_by_default(
    backend: tuple[str, dict[str, int]], status: int, up: bool
) -> None:
    base, answers = backend
    answers["health"] = status
    assert await with_sender(base, lambda s: s.probe(), health_url=f"{base}/health") is up


async def test_healthy_statuses_are_configurable(backend: tuple[str, dict[str, int]]) -> None:
    base, answers = backend
    answers["health"] = 204
    assert await with_sender(base, lambda s: s.probe(), health_url=f"{base}/health", health_ok_statuses=(200,)) is False
    answers["health"] = 200
    assert await with_sender(base, lambda s: s.probe(), health_url=f"{base}/health", health_ok_statuses=(200,)) is True


async def test_a_probe_that_cannot_connect_is_down() -> None:
    assert await with_sender("http://127.0.0.1:9", lambda s: s.probe(), health_url="http://127.0.0.1:9/health") is False


async def test_without_a_health_url_the_trial_message_is_the_probe(backend: tuple[str, dict[str, int]]) -> None:
    base, answers = backend
    answers["post"] = 405  # a GET on the delivery URL would have said "405: up" to the old probe
    assert await with_sender(base, lambda s: s.probe()) is True


@pytest.mark.parametrize(
    ("status", "error"),
    [(200, None), (503, TransientDeliveryError), (429, TransientDeliveryError), (400, PermanentDeliveryError)],
)
async def test_post_answers_are_classified(
    backend: tuple[str, dict[str, int]], status: int, error: type[Exception] | None
) -> None:
    base, answers = backend
    answers["post"] = status
    if error is None:
        await with_sender(base, lambda s: s.send(MSG, 1))
    else:
        with pytest.raises(error) as info:
            await with_sender(base, lambda s: s.send(MSG, 1))
        assert getattr(info.value, "status", None) == status
