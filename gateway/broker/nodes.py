"""Which RabbitMQ node a connection goes to: the `[broker] url` list, tried in turn.

A cluster's nodes are equals for a client: any node serves any queue (it forwards to the
queue's leader), so a connection only needs *a* node that answers. `Nodes.connect()` tries
them in order, starting after the node it was last connected to (when a node dies, the one
it just lost is the least likely to answer), one `connect_timeout_s` each, and pauses
`reconnect_interval_s` after a round in which none answered. It returns a plain
aio-pika connection: the caller (publisher.py, delivery/connection.py) notices the loss and
calls `connect()` again, so failing over is the same code as reconnecting.

A URL is logged by its host and port only: it carries the credentials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection
from pamqp.common import FieldTable
from yarl import URL

from gateway.settings.model import BrokerSettings

log = logging.getLogger("swgw.broker")

CONNECT_ERRORS = (
    TimeoutError,
    ConnectionError,
    OSError,
    aiormq.exceptions.AMQPError,
    RuntimeError,
)


def where(url: str) -> str:
    """host:port of a node URL, without its credentials."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


class Nodes:
    """The node list of one connection. `name` is the connection's name in RabbitMQ's UI."""

    def __init__(self, settings: BrokerSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._urls = [u.reveal() for u in settings.nodes]
        self._next = 0
        self.current: str | None = None  # host:port of the node connected to now

    def _url(self, url: str) -> str:
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}heartbeat={self.settings.heartbeat_s}&name={self.name}"

    async def connect(self, closing: Callable[[], bool] = lambda: False) -> AbstractConnection | None:
        """The first node that answers, trying each in turn until one does; None once `closing()`."""
        b = self.settings
        while not closing():
            for _ in range(len(self._urls)):
                i = self._next
                self._next = (i + 1) % len(self._urls)
                url = self._urls[i]
                try:
                    conn = await aio_pika.connect(self._url(url), timeout=b.connect_timeout_s)
                except CONNECT_ERRORS as exc:
                    log.warning(
                        "broker node %s unreachable: %s",
                        where(url),
                        exc or type(exc).__name__,
                        extra={"event": "broker_unreachable", "connection": self.name, "node": where(url)},
                    )
                    if closing():
                        return None
                    continue
                self.current = where(url)
                return conn
            log.warning(
                "no broker node answered; retrying in %.1fs",
                b.reconnect_interval_s,
                extra={"event": "broker_unreachable", "connection": self.name},
            )
            await asyncio.sleep(b.reconnect_interval_s)
        return None

    async def after_loss(self) -> None:
        """The pause before reconnecting after a loss: with one node, `reconnect_interval_s`;
        with several, none (the next node is tried at once)."""
        if len(self._urls) == 1:
            await asyncio.sleep(self.settings.reconnect_interval_s)


def lost_future(conn: AbstractConnection) -> asyncio.Future[None]:
    """A future done once `conn` closes, whatever closed it: what a connection's owner waits on."""
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(*_: object) -> None:
        if not lost.done():
            lost.set_result(None)

    conn.close_callbacks.add(on_close)
    return lost


async def connect_first(settings: BrokerSettings, client_properties: FieldTable) -> AbstractConnection:
    """One try of each node in order, for a command's short-lived connection; the last failure is raised."""
    for i, node in enumerate(settings.nodes):
        url = str(URL(node.reveal()).update_query(heartbeat=settings.heartbeat_s))
        try:
            return await aio_pika.connect(url, timeout=settings.connect_timeout_s, client_properties=client_properties)
        except CONNECT_ERRORS:
            if i + 1 == len(settings.nodes):
                raise
    raise AssertionError("settings.nodes is never empty")
