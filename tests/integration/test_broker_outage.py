"""Broker outages without touching the shared broker: the gateway connects through a TCP proxy we cut."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.runtime.app import BROKER
from tests.helpers import SCHEMAS, TcpProxy, config_doc, run_gateway, with_message_id, write_settings

pytestmark = pytest.mark.integration
BODY = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()


async def wait_for(predicate, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the condition is gateway state, polled cheaply
            await asyncio.sleep(0.05)


async def test_broker_cut_gives_503_with_retry_after_then_recovers_by_itself(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    settings = write_settings(tmp_path, config_doc(prefix, broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/"))
    cleanup.append(settings)
    async with run_gateway(settings, role="ingress") as gw:
        status, _, _ = await gw.post(with_message_id(BODY, "B-1"))
        assert status == 202

        await proxy.cut()
        broker = gw.app[BROKER]
        await wait_for(lambda: not broker.ready)
        started = time.monotonic()
        status, problem, headers = await gw.post(with_message_id(BODY, "B-2"))
        assert status == 503
        assert problem["reason"] == "broker_unavailable"
        assert int(headers["Retry-After"]) > 0
        assert time.monotonic() - started < settings.broker.confirm_timeout_s  # fails fast, never hangs
        async with gw.session.get(f"{gw.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["broker"]["state"] == "down"
        assert gw.metric("swgw_broker_connected") == 0

        await proxy.start()  # the broker is back: the gateway reconnects by itself
        await wait_for(lambda: broker.ready, timeout_s=30)
        status, receipt, _ = await gw.post(with_message_id(BODY, "B-3"))
        assert status == 202, receipt
        assert gw.metric("swgw_broker_reconnects_total") >= 1
    await proxy.cut()


async def test_gateway_starts_and_serves_while_the_broker_is_down(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    proxy = TcpProxy(5672)  # not started: connections are refused
    settings = write_settings(tmp_path, config_doc(prefix, broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/"))
    cleanup.append(settings)
    async with run_gateway(settings, role="ingress", wait_ready=False) as gw:
        async with gw.session.get(f"{gw.url}/healthz") as resp:
            assert resp.status == 200
        async with gw.session.get(f"{gw.url}/readyz") as resp:
            assert resp.status == 503
        status, problem, _ = await gw.post(with_message_id(BODY, "S-1"))
        assert (status, problem["reason"]) == (503, "broker_unavailable")

        await proxy.start()
        await wait_for(lambda: gw.app[BROKER].ready, timeout_s=30)
        async with gw.session.get(f"{gw.url}/readyz") as resp:
            assert resp.status == 200
        status, receipt, _ = await gw.post(with_message_id(BODY, "S-2"))
        assert status == 202, receipt
    await proxy.cut()
