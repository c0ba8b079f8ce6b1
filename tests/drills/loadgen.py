"""A partner in its own process: posts envelopes at a steady rate and writes down every answer.

Run as `python -m tests.drills.loadgen --url URL --token T --template FILE --out FILE ...`.
It lives in a separate process so that whatever the drill does to the gateway or the test's
event loop (kills, restarts, blocking calls), the partner keeps its own clock and its own
record, like a real one. Each finished request becomes one JSON line in `--out`, flushed at
once so the drill can read progress while it runs::

    {"id": "D1-000042", "status": 202, "t": 3.21, "ts": 1795000000.5, "latency_s": 0.008, "reason": null}

`status` is 0 when no HTTP answer came (refused, reset, client timeout); `reason` is the
problem's `reason` or the exception name. Each id is posted once (no retries), so "202'd
ids" are exactly the lines with status 202. SIGTERM stops new requests; in-flight ones
finish (bounded by `--timeout-s`) and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from typing import IO, Any

import aiohttp


def with_id(template: bytes, message_id: str) -> bytes:
    start = template.index(b"<MessageId>") + len(b"<MessageId>")
    end = template.index(b"</MessageId>")
    return template[:start] + message_id.encode() + template[end:]


async def _post(
    session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes, mid: str, t0: float, out: IO[str]
) -> None:
    started = time.monotonic()
    record: dict[str, Any] = {
        "id": mid,
        "status": 0,
        "t": round(started - t0, 3),
        "ts": time.time(),  # wall clock, so the drill can tell which phase a request started in
        "reason": None,
    }
    try:
        async with session.post(
            args.url,
            data=body,
            headers={"Content-Type": "application/xml", "Authorization": f"Bearer {args.token}"},
        ) as resp:
            record["status"] = resp.status
            if resp.status >= 400:
                with_reason: dict[str, Any] = await resp.json(content_type=None)
                record["reason"] = with_reason.get("reason")
            else:
                await resp.read()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record["reason"] = type(exc).__name__
    record["latency_s"] = round(time.monotonic() - started, 4)
    out.write(json.dumps(record) + "\n")
    out.flush()


async def run(args: argparse.Namespace, template: bytes, out: IO[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    interval = 1.0 / args.rate
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.monotonic()
        i = 0
        while not stop.is_set() and (args.count == 0 or i < args.count):
            mid = f"{args.id_prefix}{i:06d}"
            task = asyncio.create_task(_post(session, args, with_id(template, mid), mid, t0, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            # steady schedule: a slow answer never delays the next request
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                with_stop = asyncio.ensure_future(stop.wait())
                await asyncio.wait({with_stop}, timeout=delay)
                with_stop.cancel()
        if tasks:
            await asyncio.wait(tasks)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadgen")
    p.add_argument("--url", required=True, help="the gateway's POST /v1/messages URL")
    p.add_argument("--token", required=True)
    p.add_argument("--template", required=True, help="an envelope file; its MessageId is replaced per post")
    p.add_argument("--out", required=True, help="JSON-lines file, appended")
    p.add_argument("--id-prefix", default="LG-")
    p.add_argument("--rate", type=float, default=20.0, help="posts per second")
    p.add_argument("--count", type=int, default=0, help="stop after this many posts (0 = until SIGTERM)")
    p.add_argument("--timeout-s", type=float, default=15.0, help="client timeout per request")
    args = p.parse_args(argv)
    # Lines are small and flushed one by one; a blocking write is cheaper than a thread hop.
    with Path(args.out).open("a", encoding="utf-8") as out:
        asyncio.run(run(args, Path(args.template).read_bytes(), out))


if __name__ == "__main__":
    main()
