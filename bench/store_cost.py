"""CPU per message of the SQLite journal store alone: claim + confirm, 64 requests at a time.

    .venv/bin/python -m bench.store_cost [--messages 5000] [--concurrency 64]

What intake asks of the store per accepted message, without HTTP, XML or RabbitMQ, so a change
to the store can be measured on a busy machine: CPU time (user + system, all threads) is far
less sensitive to other processes than throughput. Prints one JSON line. For a before/after,
run it with `PYTHONPATH` pointing at an export of the base commit (`git archive`), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Arrival, Claimed, Receipt
from gateway.settings.model import Dedup

BODY = b"x" * 8000


async def run(messages: int, concurrency: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="swgw-store-cost-"))
    store = SqliteStore(Dedup(backend="sqlite", path=tmp / "store.sqlite3"))
    await store.start()
    sem = asyncio.Semaphore(concurrency)
    now = time.time()

    async def one(i: int) -> None:
        async with sem:
            a = Arrival(
                "VN-NSW",
                f"m-{i}",
                "CUSDEC",
                "VN-VNACCS",
                "vnaccs",
                len(BODY),
                "0" * 64,
                "2026-12-01T00:00:00.000Z",
                now,
            )
            claim = await store.claim(a)
            assert isinstance(claim, Claimed)
            await asyncio.sleep(0)  # the publish
            await store.confirm(claim, Receipt(a.message_id, a.destination, a.received_at))

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(messages)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await store.close()
    return {"messages": messages, "cpu_us_per_msg": 1e6 * cpu / messages, "per_s": messages / wall}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.concurrency))))


if __name__ == "__main__":
    main()
