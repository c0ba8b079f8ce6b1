"""What every benchmark process shares: the payload, the config, broker names, RSS readings, stats.

One payload for everybody (ceiling, gateway, backlog, parking): the 8 KB CUSDEC example,
each copy with its own MessageId, so dedup, validation and routing do their real work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aio_pika

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD_FILE = ROOT / "schemas" / "examples" / "CUSDEC" / "valid" / "import-a11-it-equipment.xml"
SCHEMA_FILE = ROOT / "schemas" / "customs" / "declaration.xsd"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
TOKEN = "bench-token-vn-nsw"
ADMIN_TOKEN = "bench-admin-token"
DEST = "vnaccs"
ID_MARK = b"<MessageId>"
ID_END = b"</MessageId>"


def payload() -> bytes:
    return PAYLOAD_FILE.read_bytes()


def split_payload(body: bytes | None = None) -> tuple[bytes, bytes]:
    """(before id, after id): a unique document is `pre + id + post`, no XML work per request."""
    body = payload() if body is None else body
    start = body.index(ID_MARK) + len(ID_MARK)
    return body[:start], body[body.index(ID_END) :]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout_s: float = 30.0, ok: Iterable[int] = (200,)) -> None:
    """Poll `url` until it answers one of `ok`; processes we start need a moment to listen."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    codes = set(ok)
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status in codes:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer {sorted(codes)} within {timeout_s:g}s")
            await asyncio.sleep(0.1)


def gateway_toml(
    prefix: str,
    port: int,
    sink_port: int,
    dedup_path: Path,
    *,
    admin_port: int,
    dedup: str = "sqlite",
    dsn: str | None = None,
    table: str | None = None,
) -> str:
    """The gateway's settings for the bench: ops/gateway.toml plus what production tuning says.

    Departures from the defaults: the partner's rate limit is raised (one partner sends
    everything here), the admin API sits on its own port (as with --workers > 1), and the
    destination is tuned for a fast backend (concurrency, max_rate_per_s, probe every
    second). Logging stays at the default INFO, one JSON line per accepted message.
    """
    import hashlib

    sha = hashlib.sha256(TOKEN.encode()).hexdigest()
    admin_sha = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
    return f"""
[server]
host = "127.0.0.1"
port = {port}
max_body_bytes = 5000000

[broker]
url = "{RABBIT_URL}"
prefix = "{prefix}"

[admin]
token_sha256 = "{admin_sha}"
port = {admin_port}

[logging]
level = "INFO"
format = "json"

[dedup]
backend = "{dedup}"
path = "{dedup_path}"
{f'dsn = "{dsn}"' if dsn else ""}
{f'table = "{table}"' if table else ""}

[[partners]]
id = "VN-NSW"
token_sha256 = ["{sha}"]
rate_per_s = 1000000.0
burst = 1000000

[[message_types]]
name = "CUSDEC"
schema = "{SCHEMA_FILE}"

[[destinations]]
id = "{DEST}"
url = "http://127.0.0.1:{sink_port}/inbound"
health_url = "http://127.0.0.1:{sink_port}/health"
concurrency = 64
max_rate_per_s = 5000.0
probe_interval_s = 1.0

[[routes]]
to = "VN-VNACCS"
message_type = "CUSDEC"
destination = "{DEST}"
"""


# -- broker -------------------------------------------------------------------------------
def queue_name(prefix: str) -> str:
    return f"{prefix}.dest.{DEST}"


def parking_name(prefix: str) -> str:
    return f"{prefix}.parked.{DEST}"


async def queue_depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    q = await channel.declare_queue(name, passive=True)
    return q.declaration_result.message_count or 0


async def purge(names: Sequence[str]) -> None:
    conn = await aio_pika.connect(RABBIT_URL)
    async with conn:
        for name in names:
            ch = await conn.channel()
            try:
                queue = await ch.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:  # no such queue (yet): nothing to purge
                continue
            await queue.purge()
            await ch.close()


async def delete_topology(prefix: str, extra_queues: Sequence[str] = ()) -> None:
    conn = await aio_pika.connect(RABBIT_URL)
    async with conn:
        for name in (queue_name(prefix), parking_name(prefix), *extra_queues):
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.queue_delete(name)
            with contextlib.suppress(Exception):
                await ch.close()
        ch = await conn.channel()
        with contextlib.suppress(Exception):
            await ch.exchange_delete(f"{prefix}.messages")


# -- process memory -------------------------------------------------------------------------
def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB from /proc; (0, 0) once the process is gone."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def children_of(pid: int) -> list[int]:
    """Direct children (the --workers processes of a gateway)."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


# -- statistics ----------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated runs: the table shows median and min-max."""
    vals = sorted(values)
    return {
        "median": statistics.median(vals) if vals else None,
        "min": vals[0] if vals else None,
        "max": vals[-1] if vals else None,
        "runs": list(values),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


def env_without_proxy() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


# -- CPU time -------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far, from /proc/<pid>/stat (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)
    return 0.0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its direct children (a gateway with --workers)."""
    return cpu_s(pid) + sum(cpu_s(c) for c in children_of(pid))


def rabbit_pid() -> int | None:
    """The pid of the RabbitMQ node listening on 127.0.0.1:5672 (beam.smp), from `ss`; None if unknown."""
    import re
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ss", "-ltnpH", "sport = :5672"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r'"beam\.smp",pid=(\d+)', out)
        if m:
            return int(m.group(1))
    return None


def load_average() -> str:
    """`uptime`'s load averages, recorded with each run (the machine is shared)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"
