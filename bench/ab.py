"""Before/after of a change in one run: the gateway at a base commit against the working tree, alternating.

    .venv/bin/python -m bench.ab --base HEAD --paths gateway/journal/sqlite.py [--runs 3] [--only intake,drain]
                                 [--store postgres]

The base's `gateway/` is exported with `git archive` into a temporary directory, and a second
copy gets the working tree's version of `--paths` (only the change under test: others may be
editing other files of the same tree); each runs as `python -m gateway serve` with
`PYTHONPATH` pointing at its copy. Same config, payload, load and machine; the two alternate (base, new, new, base, ...)
so drift on the shared machine hits both alike, and the medians are compared. Intake:
saturation with 64 connections (`--role ingress`), CPU per message of the gateway's processes.
Drain: `--drain-size` queued, the sink up, `--role all` started, timed from the sink's first
count to its last. `--store postgres` gives both the PostgreSQL store instead of SQLite (the tests'
database, a table of its own, dropped after). Prints one table; this is how each optimisation's
commit gets its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.backlog import declare_topology, publish_backlog
from bench.common import ROOT, load_average, purge, queue_name, wait_http
from bench.phases import CpuMeter, alternate
from bench.procs import PYTHON, Proc
from bench.store_cost import postgres_cpu_s
from bench.suite import PG_DSN, Bench, log


class AB(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        if self.pg_config is not None:  # --store postgres: the gateway on PostgreSQL is the one measured
            self.config, self.gw_port = self.pg_config, self.pg_port
        self.dirs = {kind: Path(tempfile.mkdtemp(prefix=f"swgw-ab-{kind}-")) for kind in ("base", "new")}
        archive = subprocess.run(["git", "archive", args.base, "gateway"], cwd=ROOT, capture_output=True, check=True)
        for path in self.dirs.values():
            subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
            (path / "schemas").symlink_to(ROOT / "schemas")  # gateway/schemas is a symlink to ../schemas
        for item in args.paths.split(","):
            if item:  # `path` (the working tree's) or `path=file` (another version of it)
                rel, _, source = item.partition("=")
                target = self.dirs["new"] / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source or ROOT / rel, target)

    def version(self, kind: str, role: str) -> Proc:
        argv = [PYTHON, "-m", "gateway", "serve", "--config", str(self.config), "--role", role]
        if self.args.workers > 1:
            argv += ["--workers", str(self.args.workers)]
        # Run from the copy: `python -m` puts the working directory first on sys.path, ahead of
        # PYTHONPATH, so from the checkout both would import the checkout's gateway.
        env = {"PYTHONPATH": str(self.dirs[kind])}
        proc = Proc(f"gateway-{kind}-{role}", argv, self.tmp, env=env, cwd=self.dirs[kind])
        self.procs.append(proc)
        self.check_version(proc, kind)
        try:
            asyncio.run(wait_http(f"http://127.0.0.1:{self.gw_port}/readyz", timeout_s=60))
        except TimeoutError:
            raise RuntimeError(f"{kind} gateway did not become ready:\n{proc.tail()}") from None
        return proc

    def check_version(self, proc: Proc, kind: str) -> None:
        """Fail loudly unless the process runs the copy it was given (not the checkout)."""
        out = subprocess.run(
            [PYTHON, "-c", "import gateway; print(gateway.__file__)"], cwd=self.dirs[kind],
            env={**os.environ, "PYTHONPATH": str(self.dirs[kind])}, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not out.startswith(str(self.dirs[kind])):
            raise RuntimeError(f"the {kind} gateway would import {out}, not its copy in {self.dirs[kind]}")

    def intake(self) -> dict[str, Any]:
        rates: dict[str, list[float]] = {"base": [], "new": []}
        cpu: dict[str, list[float]] = {"base": [], "new": []}
        pg: dict[str, list[float]] = {"base": [], "new": []}
        for kind in ("base", "new"):  # warm-up, not measured
            gw = self.version(kind, "ingress")
            self.saturate(self.gw_port, 3)
            self.stop(gw)
        asyncio.run(purge([queue_name(self.prefix)]))
        for kind in alternate(self.args.runs, ("base", "new")):
            gw = self.version(kind, "ingress")
            try:
                self.saturate(self.gw_port, 2)  # this process's own warm-up
                meter = CpuMeter(gw.pid)
                meter.start()
                pg0 = postgres_cpu_s()
                rate = self.saturate(self.gw_port, self.args.saturation_s)
                ms = meter.stop(rate * self.args.saturation_s)["proc_ms_per_msg"] or 0.0
                pg_ms = 1000 * (postgres_cpu_s() - pg0) / max(rate * self.args.saturation_s, 1.0)
            finally:
                self.stop(gw)
                asyncio.run(purge([queue_name(self.prefix)]))
            rates[kind].append(rate)
            cpu[kind].append(ms)
            pg[kind].append(pg_ms)
            also = f", PostgreSQL {pg_ms:.3f} ms (every postgres process)" if self.pg_config is not None else ""
            log(f"  intake {kind}: {rate:,.0f}/s, {ms:.3f} ms CPU per message{also}")
        return {k: {"per_s": rates[k], "cpu_ms": cpu[k], "pg_cpu_ms": pg[k]} for k in rates}

    def drain(self) -> dict[str, Any]:
        size = self.args.drain_size
        rates: dict[str, list[float]] = {"base": [], "new": []}
        cpu: dict[str, list[float]] = {"base": [], "new": []}
        for kind in alternate(self.args.runs, ("base", "new")):
            sink = self.sink()
            gw = None
            try:
                asyncio.run(wait_http(f"http://127.0.0.1:{self.sink_port}/health", timeout_s=30))
                asyncio.run(declare_topology(self.config))
                asyncio.run(publish_backlog(queue_name(self.prefix), self.prefix, size, parked=False))
                gw = self.version(kind, "all")
                meter = CpuMeter(gw.pid)
                meter.start()
                first, done = asyncio.run(self._wait_delivered(size, lambda: 0.0))
                ms = meter.stop(size)["proc_ms_per_msg"] or 0.0
            finally:
                if gw is not None:
                    self.stop(gw)
                self.stop(sink)
                asyncio.run(purge([queue_name(self.prefix)]))
            rate = size / (done - first)
            rates[kind].append(rate)
            cpu[kind].append(ms)
            log(f"  drain {kind}: {rate:,.0f}/s, {ms:.3f} ms CPU per message")
        return {k: {"per_s": rates[k], "cpu_ms": cpu[k]} for k in rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare the working tree with")
    parser.add_argument("--paths", required=True, help="comma-separated files whose working-tree version is 'new'")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--saturation-s", type=float, default=10.0)
    parser.add_argument("--drain-size", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", default="intake,drain")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite", help="the gateways' journal store")
    parser.add_argument("--pg-dsn", default=os.environ.get("SWGW_BENCH_PG_DSN", PG_DSN), help="for --store postgres")
    args = parser.parse_args(argv)
    args.dedup, args.keep_tmp, args.profile, args.latency_s = "sqlite", False, False, 10.0
    if args.store != "postgres":
        args.pg_dsn = ""
    ab = AB(args)
    load = load_average()
    log(f"A/B: base {args.base} vs it with {args.paths}, {args.runs} alternating runs each, load average {load}")
    out: dict[str, Any] = {}
    try:
        for what in args.only.split(","):
            out[what] = getattr(ab, what)()
    finally:
        ab.cleanup()
    print(f"\nA/B {args.base} -> working tree, {time.strftime('%Y-%m-%d %H:%M %Z')}, load {load} -> {load_average()}")
    for what, r in out.items():
        b, n = statistics.median(r["base"]["per_s"]), statistics.median(r["new"]["per_s"])
        bc, nc = statistics.median(r["base"]["cpu_ms"]), statistics.median(r["new"]["cpu_ms"])
        print(
            f"{what}: {b:,.0f}/s -> {n:,.0f}/s ({n / b - 1:+.0%}); CPU per message {bc:.3f} -> {nc:.3f} ms "
            f"({nc / bc - 1:+.0%}); runs base {[round(x) for x in r['base']['per_s']]} "
            f"new {[round(x) for x in r['new']['per_s']]}"
        )
        if args.store == "postgres" and r["base"].get("pg_cpu_ms"):
            bp, np_ = statistics.median(r["base"]["pg_cpu_ms"]), statistics.median(r["new"]["pg_cpu_ms"])
            print(f"{what}: PostgreSQL CPU per message {bp:.3f} -> {np_:.3f} ms (every postgres process on the host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
