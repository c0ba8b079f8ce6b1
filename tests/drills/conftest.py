"""Drill fixtures: one private RabbitMQ node per drill module (a start costs ~5 s).

The node is never the shared broker on 5672: drills kill it, restart it and fill its memory
watermark. Missing rabbitmq-server skips locally and fails in CI, like the shared broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.rabbit_node import RabbitNode, rabbitmq_sbin


@pytest.fixture(scope="module")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    if rabbitmq_sbin() is None:
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed in CI (ops/setup-env.sh installs it)")
        pytest.skip("rabbitmq-server is not installed")
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"))
    took = node.start()
    print(f"drill node {node.name} on 127.0.0.1:{node.port} ready in {took:.1f}s")
    yield node
    node.remove()
