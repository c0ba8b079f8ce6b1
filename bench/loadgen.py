"""Load generators, each run in processes of their own, printing one JSON result on stdout.

`open`: an open-loop generator. Request i is due at t0 + i/rate whatever happened to the
earlier ones (a slow server gets more concurrent requests, not fewer), and its latency is
measured from when it was *due*, not from when it was sent, so a stalled server or a
late generator cannot hide latency (no coordinated omission). `lag_p99_ms` reports how
late the generator itself started requests; if it is large the generator, not the
gateway, was the limit.

`closed`: C connections each posting back to back (a fallback for saturation when `wrk`
is not installed).

Every request carries a unique MessageId (`<run id>-<process>-<n>`) in the same 8 KB
CUSDEC envelope. Measurements from the first `--warmup` seconds are dropped.

    python -m bench.loadgen open --url http://127.0.0.1:8080/v1/messages --rate 1000 --duration 10
    python -m bench.loadgen closed --url ... --connections 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

from bench.common import TOKEN, percentile, split_payload

HEADERS = {"Content-Type": "application/xml", "Authorization": f"Bearer {TOKEN}"}


def _loop_setup() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


async def _open_loop(url: str, rate: float, duration: float, warmup: float, tag: str) -> dict[str, Any]:
    pre, post = split_payload()
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=1024)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = clock() + 0.1
        measured_from = t0 + warmup
        total = int(rate * (warmup + duration))

        async def one(i: int, due: float) -> None:
            body = pre + f"{tag}-{i}".encode() + post
            lag = clock() - due
            status = await _post(session, url, body)
            if due >= measured_from:
                latencies.append(clock() - due)
                lags.append(lag)
                statuses[status] += 1

        i = 0
        while i < total:
            now = clock()
            while i < total and t0 + i / rate <= now:
                task = asyncio.create_task(one(i, t0 + i / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - clock()))
        if tasks:
            await asyncio.gather(*tasks)
    return {"latencies": latencies, "lags": lags, "statuses": dict(statuses)}


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    """One POST; its status, or 0 when the connection failed (counted apart in the report)."""
    try:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0


async def _closed_loop(url: str, connections: int, duration: float, warmup: float, tag: str) -> dict[str, Any]:
    pre, post = split_payload()
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    counter = iter(range(10**12))
    start = loop.time()
    measured_from, end = start + warmup, start + warmup + duration
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            while (now := loop.time()) < end:
                body = pre + f"{tag}-{next(counter)}".encode() + post
                status = await _post(session, url, body)
                if now >= measured_from and loop.time() <= end:
                    statuses[status] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return {"statuses": dict(statuses), "duration_s": duration}


def _child(mode: str, args: argparse.Namespace, index: int, out: Any) -> None:
    _loop_setup()
    tag = f"{args.run_id}-{index}"
    if mode == "open":
        result = asyncio.run(_open_loop(args.url, args.rate / args.procs, args.duration, args.warmup, tag))
    else:
        per = max(1, args.connections // args.procs)
        result = asyncio.run(_closed_loop(args.url, per, args.duration, args.warmup, tag))
    out.send(result)
    out.close()


def run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(args.procs):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(mode, args, i, send))
        p.start()
        pipes.append(recv)
        procs.append(p)
    results = [r.recv() for r in pipes]
    for p in procs:
        p.join()
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update({int(k): v for k, v in r["statuses"].items()})
    out: dict[str, Any] = {"mode": mode, "statuses": dict(statuses), "procs": args.procs}
    if mode == "open":
        lat = sorted(x for r in results for x in r["latencies"])
        lag = sorted(x for r in results for x in r["lags"])
        ok = statuses.get(202, 0)
        out.update(
            offered_per_s=args.rate,
            requests=len(lat),
            accepted=ok,
            p50_ms=percentile(lat, 0.50) * 1000,
            p99_ms=percentile(lat, 0.99) * 1000,
            max_ms=(lat[-1] if lat else float("nan")) * 1000,
            lag_p99_ms=percentile(lag, 0.99) * 1000,
        )
    else:
        out.update(accepted_per_s=statuses.get(202, 0) / args.duration, connections=args.connections)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="swgw load generators")
    parser.add_argument("mode", choices=("open", "closed"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="open: offered messages/s in total")
    parser.add_argument("--connections", type=int, default=64, help="closed: connections in total")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not measured")
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    parser.add_argument("--run-id", default=uuid.uuid4().hex[:10])
    args = parser.parse_args(argv)
    start = time.monotonic()
    result = run(args.mode, args)
    result["wall_s"] = time.monotonic() - start
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
