"""CPU per message of a journal store alone: claim + confirm, 64 requests at a time.

    .venv/bin/python -m bench.store_cost [--messages 5000] [--concurrency 64] [--backend postgres]

What intake asks of the store per accepted message, without HTTP, XML or RabbitMQ, so a change
to the store can be measured on a busy machine: CPU time (user + system, all threads) is far
less sensitive to other processes than throughput. With `--backend postgres` (a table of its own on
`--dsn`, dropped after) the server's CPU is read from /proc (every `postgres` process of
the host, so other users of that server count too) as `pg_cpu_us_per_msg`. Prints one JSON line. For a before/after,
run it with `PYTHONPATH` pointing at an export of the base commit (`git archive`), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from gateway.journal.sqlite import SqliteStore
from gateway.journal.store import Arrival, Claimed, JournalStore, Receipt
from gateway.settings.model import Dedup, Secret

PG_DSN = "postgresql://swgw:swgw@127.0.0.1:5432/swgw_test"  # the tests' database (tests/helpers.py)

BODY = b"x" * 8000


async def run(messages: int, concurrency: int, backend: str = "sqlite", dsn: str = PG_DSN) -> dict[str, float]:
    store: JournalStore
    table = f"store_cost_{uuid.uuid4().hex[:8]}"
    if backend == "postgres":
        from gateway.journal.postgres import PostgresStore

        store = PostgresStore(Dedup(backend="postgres", dsn=Secret(dsn), table=table))
    else:
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

    t0, c0, p0 = time.perf_counter(), time.process_time(), postgres_cpu_s()
    await asyncio.gather(*(one(i) for i in range(messages)))
    wall, cpu, pg = time.perf_counter() - t0, time.process_time() - c0, postgres_cpu_s() - p0
    await store.close()
    if backend == "postgres":
        await _drop(dsn, table)
    out = {"messages": messages, "cpu_us_per_msg": 1e6 * cpu / messages, "per_s": messages / wall}
    if backend == "postgres":
        out["pg_cpu_us_per_msg"] = 1e6 * pg / messages
    return out


def postgres_cpu_s() -> float:
    """User + system CPU seconds of every process named `postgres` on this host (0 where /proc is not)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, _, rest = text.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


async def _drop(dsn: str, table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}_events"; DROP TABLE IF EXISTS "{table}"')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--dsn", default=PG_DSN, help="PostgreSQL for --backend postgres (a table of its own)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.concurrency, args.backend, args.dsn))))


if __name__ == "__main__":
    main()
