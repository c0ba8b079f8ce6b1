"""Shared test helpers: config writing, a running gateway on loopback, broker cleanup, a cuttable TCP proxy.

Every test gets its own broker prefix, so tests never see each other's messages, and
cleans its queues and exchange up afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.broker.topology import Names
from gateway.runtime.app import BROKER, DELIVERY, create_app
from gateway.settings.load import load_settings
from gateway.settings.model import Settings
from gateway.tools.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
SHARED = ROOT.parent / "shared" / "testdata"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"

TOKEN = "test-token-vn-nsw"
OTHER_TOKEN = "test-token-th-nsw"
ADMIN_TOKEN = "test-admin-token"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc: Mapping[str, Any]) -> str:
    """Just enough TOML writing for test configs: tables and arrays of tables of scalars."""
    out: list[str] = []
    for name, value in doc.items():
        if isinstance(value, Mapping):
            out.append(f"[{name}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        else:
            for item in value:
                out.append(f"[[{name}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        out.append("")
    return "\n".join(out)


def config_doc(
    prefix: str,
    *,
    broker_url: str = RABBIT_URL,
    message_types: Mapping[str, Path] | None = None,
    destinations: Iterable[Mapping[str, Any]] | None = None,
    routes: Iterable[Mapping[str, Any]] | None = None,
    partners: Iterable[Mapping[str, Any]] | None = None,
    server: Mapping[str, Any] | None = None,
    broker: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    types = message_types or {"CUSDEC": SCHEMAS / "customs" / "declaration.xsd"}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 200_000, **(server or {})},
        "broker": {
            "url": broker_url,
            "prefix": prefix,
            "confirm_timeout_s": 3,
            "reconnect_interval_s": 0.3,
            "connect_timeout_s": 2,
            "retry_after_s": 2,
            **(broker or {}),
        },
        "admin": {"token_sha256": sha(ADMIN_TOKEN)},
        "logging": {"level": "INFO", "format": "json"},
        "partners": list(
            partners
            or [
                {"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "rate_per_s": 100000.0, "burst": 100000},
                {"id": "TH-NSW", "token_sha256": [sha(OTHER_TOKEN)], "message_types": ["ECOO"]},
            ]
        ),
        "message_types": [{"name": n, "schema": str(p)} for n, p in types.items()],
        "destinations": list(destinations or [{"id": "vnaccs", "url": "http://127.0.0.1:9/inbound"}]),
        "routes": list(routes or [{"to": "VN-VNACCS", "message_type": "CUSDEC", "destination": "vnaccs"}]),
    }


def write_settings(tmp_path: Path, doc: Mapping[str, Any]) -> Settings:
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return load_settings(path, env={})


@dataclass
class RunningGateway:
    app: web.Application
    url: str
    settings: Settings
    registry: CollectorRegistry
    session: aiohttp.ClientSession = field(repr=False)

    async def post(
        self,
        body: bytes,
        *,
        token: str | None = TOKEN,
        content_type: str = "application/xml",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        h = {"Content-Type": content_type, **(headers or {})}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        async with self.session.post(f"{self.url}/v1/messages", data=body, headers=h) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else {}), resp.headers

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def run_gateway(settings: Settings, *, wait_ready: bool = True, **kwargs: Any) -> AsyncIterator[RunningGateway]:
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry, **kwargs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        if wait_ready:
            await asyncio.wait_for(app[BROKER].connected.wait(), timeout=20)
            if DELIVERY in app:  # ready means every destination worker has settled (consuming, paused, ...)
                workers = app[DELIVERY].workers.values()
                await until(
                    lambda: all(w.state not in ("starting", "disconnected") for w in workers),
                    what="every destination worker to consume",
                )
        yield RunningGateway(app, f"http://127.0.0.1:{port}", settings, registry, session)
    finally:
        await session.close()
        await runner.cleanup()


async def delete_topology(settings: Settings, url: str = RABBIT_URL) -> None:
    names = Names(settings.broker.prefix)
    conn = await aio_pika.connect(url)
    async with conn:
        for dest in settings.destinations:
            for q in (names.queue(dest.id), names.parking(dest.id), names.leased(dest.id)):
                ch = await conn.channel()
                with contextlib.suppress(Exception):
                    await ch.queue_delete(q)
                with contextlib.suppress(Exception):
                    await ch.close()
        ch = await conn.channel()
        with contextlib.suppress(Exception):
            await ch.exchange_delete(names.exchange)


async def get_all(queue: str, url: str = RABBIT_URL, *, ack: bool = True) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Read every message now in `queue` (acking them unless ack=False).

    By a consumer, not basic.get: RabbitMQ refuses basic.get on a destination queue (single
    active consumer). The passive declare says how many are ready; the consumer takes that many.
    """
    out: list[aio_pika.abc.AbstractIncomingMessage] = []
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        ready = q.declaration_result.message_count or 0
        if not ready:
            return out
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        tag = await q.consume(got.put, no_ack=False)
        async with asyncio.timeout(10):
            while len(out) < ready:
                out.append(await got.get())
        await q.cancel(tag)
        for m in out:
            if ack:
                await m.ack()
            else:
                await m.nack(requeue=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """A loopback TCP proxy we can cut: cut() closes every connection and stops listening.

    Lets a test take 'the broker' away from one gateway without touching the shared broker.
    """

    def __init__(self, target_port: int, listen_port: int | None = None) -> None:
        self.target_port = target_port
        self.port = listen_port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            # Stop accepting and let the accepted connections reach _handle first: asyncio 3.11
            # drops one accepted just before its server closes with its socket left open.
            for sock in self._server.sockets:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            for _ in range(3):
                await asyncio.sleep(0)
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _passing(self, *, from_target: bool) -> None:
        """Called before each chunk is passed on; a subclass may hold it back here."""

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_target: bool) -> None:
        try:
            while data := await reader.read(65536):
                await self._passing(from_target=from_target)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)  # before the await: a cut meanwhile closes it too
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        if writer not in self._writers:  # cut while connecting upstream
            writer.close()
            up_writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, from_target=False), self._pipe(up_reader, writer, from_target=True)
        )
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def envelope(
    payload: str,
    *,
    message_id: str = "T-1",
    sender: str = "VN-NSW",
    to: str = "VN-VNACCS",
    message_type: str = "CUSDEC",
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Envelope xmlns="urn:swgw:envelope:1">\n'
        f"  <Header>\n    <MessageId>{message_id}</MessageId>\n    <From>{sender}</From>\n"
        f"    <To>{to}</To>\n    <MessageType>{message_type}</MessageType>\n"
        "    <SentAt>2026-11-23T08:00:00+07:00</SentAt>\n  </Header>\n"
        f"  <Body>\n{payload}\n  </Body>\n</Envelope>\n"
    ).encode()


def with_message_id(body: bytes, message_id: str) -> bytes:
    """A copy of an example envelope with another MessageId (so every post is a new message)."""
    start = body.index(b"<MessageId>") + len(b"<MessageId>")
    end = body.index(b"</MessageId>")
    return body[:start] + message_id.encode() + body[end:]


# PostgreSQL for the shared store of seen ids (gateway/intake/dedup/).
# ops/setup-env.sh creates this role and database; trust or password auth both work with it.
PG_DSN = os.environ.get("SWGW_TEST_PG_DSN", "postgresql://swgw:swgw@127.0.0.1:5432/swgw_test")


def require_postgres() -> str:
    """The test PostgreSQL DSN. Missing locally → skip; missing in CI → fail (CI must test for real)."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return PG_DSN
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 in CI (ops/setup-env.sh starts it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")


async def drop_pg_table(table: str, dsn: str = PG_DSN) -> None:
    """Drop a dedup/journal table, its events table and every events partition (gateway/journal/postgres_schema.py)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_events", "{table}_control"')
        # Partitions detached by a retention purge that did not get to drop them.
        for name in await conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{table}_events_p%"):
            await conn.execute(f'DROP TABLE IF EXISTS "{name[0]}"')
    finally:
        await conn.close()


# --- delivery test helpers -------------------------------------------------------
CUSDEC_BODY = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()


def fast_destination(dest_id: str, sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {
        "id": dest_id,
        "url": sim.url,
        "health_url": f"http://127.0.0.1:{sim.port}/health",
        "timeout_s": 2,
        "concurrency": 8,
        "max_attempts": 4,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.3,
        "probe_interval_s": 0.2,
        "failure_threshold": 3,
        "slow_start_s": 1,
        "max_rate_per_s": 5000,
        **extra,
    }


async def until(predicate: Callable[[], bool], timeout_s: float = 20, what: str = "condition") -> None:
    """Poll a cheap in-process condition with a deadline (never a bare sleep-and-hope)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def admin(gw: RunningGateway, method: str, path: str, token: str = ADMIN_TOKEN, **kw: Any) -> tuple[int, Any]:
    async with gw.session.request(
        method, f"{gw.url}{path}", headers={"Authorization": f"Bearer {token}"}, **kw
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def post_many(gw: RunningGateway, n: int, prefix: str = "M") -> list[str]:
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    sem = asyncio.Semaphore(32)

    async def one(mid: str) -> int:
        async with sem:
            status, receipt, _ = await gw.post(with_message_id(CUSDEC_BODY, mid))
            assert status == 202, receipt
            return status

    await asyncio.gather(*(one(m) for m in ids))
    return ids
