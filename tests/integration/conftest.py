"""Fixtures shared by the integration tests: a backend simulator and a gateway delivering to it.

Modules that need another gateway (ingress only, other schemas) define their own `gw`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.tools.simulator import Simulator
from tests.helpers import RunningGateway, config_doc, fast_destination, run_gateway, write_settings


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as s:
        yield s


@pytest.fixture
async def gw(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], sim: Simulator
) -> AsyncIterator[RunningGateway]:
    """Ingress and delivery (role "all") with one fast destination, `vnaccs`, at the simulator."""
    settings = write_settings(tmp_path, config_doc(prefix, destinations=[fast_destination("vnaccs", sim)]))
    cleanup.append(settings)
    async with run_gateway(settings) as gateway:
        yield gateway
