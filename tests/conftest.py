from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.helpers import RABBIT_URL


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The real broker. Missing locally → skip; missing in CI → fail (CI must test for real)."""
    if not _broker_up():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 in CI")
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    return RABBIT_URL


@pytest.fixture
def prefix() -> str:
    return f"swgwt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cleanup() -> AsyncIterator[list[object]]:
    """Append Settings objects to this list; their topology is deleted after the test."""
    from tests.helpers import delete_topology

    items: list[object] = []
    yield items
    for settings in items:
        await delete_topology(settings)  # type: ignore[arg-type]
