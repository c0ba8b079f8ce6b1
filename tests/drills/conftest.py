"""Drill fixtures: one private RabbitMQ node per drill module (a start costs ~5 s), or a private
three-node cluster for the replica drill (`rabbit_cluster`, ~30 s), the backend
simulator in the test's loop, and `drill(**destination)` that builds a `Drill` and stops its
processes and deletes its queues afterwards.

The node is never the shared broker on 5672: drills kill it, restart it and fill its memory
watermark. Missing rabbitmq-server skips locally and fails in CI, like the shared broker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.tools.simulator import Simulator
from tests.drills import queues
from tests.drills.harness import Drill
from tests.rabbit_node import RabbitCluster, RabbitNode, rabbitmq_sbin


def _require_rabbitmq_server() -> None:
    if rabbitmq_sbin() is None:
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed in CI (ops/setup-env.sh installs it)")
        pytest.skip("rabbitmq-server is not installed")


@pytest.fixture(scope="module")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    _require_rabbitmq_server()
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"))
    took = node.start()
    print(f"drill node {node.name} on 127.0.0.1:{node.port} ready in {took:.1f}s")
    yield node
    node.remove()


@pytest.fixture(scope="module")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three private nodes joined into one cluster, started once per module (~30 s), removed after."""
    _require_rabbitmq_server()
    cluster = RabbitCluster(tmp_path_factory.mktemp("cluster"))
    took = cluster.start()
    print(f"drill cluster {[n.name for n in cluster.nodes]} ready in {took:.1f}s")
    yield cluster
    cluster.remove()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as s:
        yield s


@pytest.fixture
async def drill(
    rabbit_node: RabbitNode, sim: Simulator, tmp_path: Path, prefix: str
) -> AsyncIterator[Callable[..., Drill]]:
    made: list[Drill] = []

    def make(**dest: Any) -> Drill:
        d = Drill(rabbit_node, sim, tmp_path, prefix, **dest)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
    if made and rabbit_node.running:
        await queues.drop(rabbit_node.url, prefix)
