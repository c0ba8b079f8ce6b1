"""The ceiling: the least a gateway can do per message on this machine, with the same tools.

aiohttp POST handler → hardened lxml parse (same parser options as gateway/intake/validation.py)
→ envelope XSD + payload XSD validation (the same schemas) → confirmed publish to a quorum
queue (one channel shared by all requests, so confirms pipeline across requests; persistent,
mandatory, the same AMQP headers the gateway sets) → 202. Nothing else: no auth, dedup,
rules, metrics or logs. Every intake figure in the report is a ratio to this, measured in
the same run with the same payload, event loop and number of processes as the gateway.

    python -m bench.ceiling --port 8099 --queue bench.ceiling [--workers 2] [--no-uvloop]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from aiohttp import web
from lxml import etree

from bench.common import RABBIT_URL, ROOT, SCHEMA_FILE
from gateway.intake.validation import untrusted_parser

ENVELOPE_XSD = ROOT / "schemas" / "envelope" / "envelope-1.xsd"


def _schema(path: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(path), etree.XMLParser(no_network=True, resolve_entities=False)))


def make_app(queue: str) -> web.Application:
    parser = untrusted_parser()  # the gateway's own hardened parser: same settings, same cost
    envelope = _schema(ENVELOPE_XSD)
    payload_schema = _schema(SCHEMA_FILE)
    state: dict[str, aio_pika.abc.AbstractExchange] = {}

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            root = etree.fromstring(body, parser)
        except etree.XMLSyntaxError:
            return web.Response(status=400)
        if root.getroottree().docinfo.doctype or not envelope.validate(root):  # type: ignore[union-attr]
            return web.Response(status=422)
        header, env_body = root[0], root[1]
        payload = next(el for el in env_body if isinstance(el.tag, str))
        if not payload_schema.validate(payload):
            return web.Response(status=422)
        values = {etree.QName(el).localname: (el.text or "").strip() for el in header}
        message = aio_pika.Message(
            body,
            headers={
                "x-swgw-message-id": values["MessageId"],
                "x-swgw-type": values["MessageType"],
                "x-swgw-from": values["From"],
                "x-swgw-to": values["To"],
                "x-swgw-destination": "ceiling",
                "x-swgw-received-at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "x-swgw-test": False,
            },
            content_type="application/xml",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=values["MessageId"],
            type=values["MessageType"],
            app_id="swgw",
        )
        await state["exchange"].publish(message, routing_key=queue, mandatory=True)  # returns after the confirm
        return web.json_response({"message_id": values["MessageId"], "status": "queued"}, status=202)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok" if "exchange" in state else "starting", status=200 if state else 503)

    async def lifespan(_: web.Application) -> AsyncIterator[None]:
        conn = await aio_pika.connect(RABBIT_URL)
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        state["exchange"] = channel.default_exchange
        yield
        await conn.close()

    app = web.Application(client_max_size=5_000_000)
    app.router.add_post("/v1/messages", post)
    app.router.add_get("/healthz", health)
    app.cleanup_ctx.append(lifespan)
    return app


def _serve(port: int, queue: str, use_uvloop: bool, reuse_port: bool) -> None:
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    web.run_app(make_app(queue), host="127.0.0.1", port=port, print=None, access_log=None, reuse_port=reuse_port)


def main() -> None:
    parser = argparse.ArgumentParser(description="minimal parse + validate + confirmed publish server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    use_uvloop = not args.no_uvloop
    reuse = args.workers > 1
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_serve, args=(args.port, args.queue, use_uvloop, reuse), daemon=True)
        for _ in range(args.workers - 1)
    ]
    for p in procs:
        p.start()
    try:
        _serve(args.port, args.queue, use_uvloop, reuse)
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                os.kill(p.pid or 0, signal.SIGTERM)
            p.join(5)


if __name__ == "__main__":
    main()
