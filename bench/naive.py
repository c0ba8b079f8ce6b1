"""The naive delivery and move ceilings: the least a drain or a replay can do per message here.

    python -m bench.naive drain --queue Q --url http://127.0.0.1:PORT/inbound --count N [--prefetch 64]
    python -m bench.naive move --source P --target Q --count N [--prefetch 256]

`drain`: consume `--queue` with a prefetch window, POST each body to the sink (one shared
aiohttp session, the same headers the gateway's sender sets), ack after the 2xx. No circuit,
no rate limit, no retries, no journal, no logs, no metrics. The suite times it exactly as it
times the gateway's drain: from the sink's first count to its last.

`move`: consume `--source` with a prefetch window, publish each message unchanged to
`--target` through the default exchange on a confirmed channel (confirms pipelined: one
publish awaited per message, many in flight), ack after the confirm. No filter, no lock, no
journal. The suite times the whole command, as it times `swgw replay`.

Both stop after `--count` messages and print one JSON line: messages, seconds from the first
message to the last settle, and the process's CPU seconds. Same event loop (uvloop) as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from bench.common import RABBIT_URL


class _Done:
    def __init__(self, count: int) -> None:
        self.count = count
        self.settled = 0
        self.first: float | None = None
        self.event = asyncio.Event()

    def started(self) -> None:
        if self.first is None:
            self.first = time.monotonic()

    def one(self) -> None:
        self.settled += 1
        if self.settled >= self.count:
            self.event.set()


async def drain(queue_name: str, url: str, count: int, prefetch: int) -> dict[str, float]:
    done = _Done(count)
    conn = await aio_pika.connect(RABBIT_URL)
    connector = aiohttp.TCPConnector(limit=prefetch)
    async with conn, aiohttp.ClientSession(connector=connector) as session:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(queue_name, passive=True)

        async def on_message(raw: AbstractIncomingMessage) -> None:
            done.started()
            headers = {
                "Content-Type": "application/xml",
                "X-Message-Id": str((raw.headers or {}).get("x-swgw-message-id", "")),
            }
            async with session.post(url, data=raw.body, headers=headers) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
            if ok:
                await raw.ack()
                done.one()
            else:
                await raw.nack(requeue=True)

        tag = await queue.consume(on_message)
        await done.event.wait()
        elapsed = time.monotonic() - (done.first or time.monotonic())
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
    return {"messages": done.settled, "seconds": elapsed}


async def move(source: str, target: str, count: int, prefetch: int) -> dict[str, float]:
    done = _Done(count)
    conn = await aio_pika.connect(RABBIT_URL)
    async with conn:
        reader = await conn.channel()
        await reader.set_qos(prefetch_count=prefetch)
        publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = publisher.default_exchange
        queue = await reader.declare_queue(source, passive=True)

        async def on_message(raw: AbstractIncomingMessage) -> None:
            done.started()
            message = aio_pika.Message(
                raw.body,
                headers=dict(raw.headers or {}),
                content_type=raw.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=raw.message_id,
                type=raw.type,
                app_id=raw.app_id,
            )
            await exchange.publish(message, routing_key=target, mandatory=True)  # returns after the confirm
            await raw.ack()
            done.one()

        tag = await queue.consume(on_message)
        await done.event.wait()
        elapsed = time.monotonic() - (done.first or time.monotonic())
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
    return {"messages": done.settled, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("drain")
    d.add_argument("--queue", required=True)
    d.add_argument("--url", required=True)
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--prefetch", type=int, default=64)
    m = sub.add_parser("move")
    m.add_argument("--source", required=True)
    m.add_argument("--target", required=True)
    m.add_argument("--count", type=int, required=True)
    m.add_argument("--prefetch", type=int, default=256)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.mode == "drain":
        result = asyncio.run(drain(args.queue, args.url, args.count, args.prefetch))
    else:
        result = asyncio.run(move(args.source, args.target, args.count, args.prefetch))
    t = os.times()
    result["cpu_s"] = t.user + t.system
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
