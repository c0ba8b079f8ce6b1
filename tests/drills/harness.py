"""Drill plumbing: a gateway as a real `swgw serve` process, the partner load in another process,
and the count at the end (lost = 202'd but never arrived; duplicates = arrivals beyond one).

Everything waits on a condition with a deadline (process ready, N answers seen); nothing
sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import ROOT, SCHEMAS, TOKEN, config_doc, to_toml

TEMPLATE = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0]
Record = dict[str, Any]


def drill_config(
    tmp_path: Path,
    prefix: str,
    broker_url: str,
    *,
    port: int,
    destination_url: str = "http://127.0.0.1:9/inbound",
    destination: Mapping[str, Any] | None = None,
    broker: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
) -> Path:
    """Write a gateway.toml for a drill gateway; the dedup store is SQLite next to it."""
    doc = config_doc(
        prefix,
        broker_url=broker_url,
        server={"port": port, **(server or {})},
        broker=broker,
        destinations=[{"id": "vnaccs", "url": destination_url, **(destination or {})}],
    )
    path = tmp_path / f"gateway-{port}.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


class GatewayProcess:
    """`python -m gateway serve` in its own process: what SIGKILL and SIGTERM drills need."""

    def __init__(self, config: Path, port: int, log: Path, *, role: str = "all", workers: int = 1) -> None:
        self.config, self.port, self.log, self.role, self.workers = config, port, log, role, workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWGW_")}  # the file is the whole config
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(self.config),
                    "--role",
                    self.role,
                    "--workers",
                    str(self.workers),
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until /readyz says 200 (broker connected, schemas compiled)."""
        assert self.proc is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_tail()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(f"{self.url}/readyz") as resp:
                            if resp.status == 200:
                                return
                    await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LoadGen:
    """Drives tests/drills/loadgen.py in a child process and reads its record."""

    def __init__(self, url: str, out: Path, *, id_prefix: str, rate: float = 30.0, timeout_s: float = 15.0) -> None:
        self.out = out
        self.args = [
            sys.executable, "-m", "tests.drills.loadgen",
            "--url", f"{url}/v1/messages", "--token", TOKEN, "--template", str(TEMPLATE),
            "--out", str(out), "--id-prefix", id_prefix, "--rate", str(rate), "--timeout-s", str(timeout_s),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.DEVNULL)

    def records(self) -> list[Record]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # the line being written right now
                out.append(json.loads(line))
        return out

    async def wait_until(self, what: str, predicate: Callable[[list[Record]], bool], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    if predicate(self.records()):
                        return
                    if self.proc is not None and self.proc.poll() is not None:
                        raise RuntimeError(f"load generator exited {self.proc.returncode}")
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout_s:g}s; {summary(self.records())}") from None

    def stop(self, timeout_s: float = 30.0) -> list[Record]:
        """SIGTERM: no new posts, in-flight ones finish; returns the full record."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        return self.records()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def accepted(records: Iterable[Record], *, after: float = 0.0) -> list[str]:
    """Ids answered 202, among requests started after wall-clock `after`."""
    return [r["id"] for r in records if r["status"] == 202 and r["ts"] >= after]


def summary(records: list[Record]) -> str:
    by = Counter((r["status"], r["reason"]) for r in records)
    return ", ".join(f"{s}/{reason or '-'}: {n}" for (s, reason), n in sorted(by.items(), key=str))


@dataclass
class Tally:
    """The end-of-drill count: what partners were promised against what arrived."""

    drill: str
    records: list[Record]
    arrived: list[str]  # every arrival, duplicates included
    promised: set[str] = field(init=False)
    lost: list[str] = field(init=False)
    duplicates: int = field(init=False)

    def __post_init__(self) -> None:
        self.promised = set(accepted(self.records))
        counts = Counter(self.arrived)
        self.lost = sorted(self.promised - set(counts))
        self.duplicates = sum(n - 1 for n in counts.values())

    def report(self) -> str:
        counts = Counter(self.arrived)
        dup_ids = sorted(i for i, n in counts.items() if n > 1)
        extra = sorted(set(counts) - self.promised)
        line = (
            f"DRILL {self.drill}: posted {len(self.records)}, 202 {len(self.promised)}, "
            f"arrived {len(self.arrived)} ({len(counts)} unique), lost {len(self.lost)}, "
            f"duplicates {self.duplicates} {dup_ids[:10]}, arrived without a 202 {len(extra)} {extra[:10]}; "
            f"answers: {summary(self.records)}"
        )
        print(line, flush=True)
        return line


def started_between(records: Iterable[Record], start: float, end: float) -> list[Record]:
    return [r for r in records if start <= r["ts"] < end]


def now() -> float:
    return time.time()
