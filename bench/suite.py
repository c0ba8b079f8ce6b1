"""The whole benchmark suite in one command: `.venv/bin/python -m bench`.

Starts what it needs against the local RabbitMQ (127.0.0.1:5672) under a broker prefix of
its own (`bench-<random>`), stops it all and deletes its queues afterwards, prints a table
and writes `bench/results/latest.json` and `bench/results/latest.md`.

1. validation: bench/bench_validation.py (lxml vs xmlschema per message type), as is.
2. intake: the ceiling (bench/ceiling.py) and the gateway (`swgw serve --role ingress`) run
   side by side and are measured in alternation, so drift on a shared 2-core machine hits
   both alike: saturation with 64 connections (wrk, or the closed-loop generator without
   wrk), then open-loop latency at 200 and 1,000 msg/s. One warm-up run each first; then
   the median of `--runs` runs with the spread (min-max).
3. drain: the gateway (`--role all`) runs with its backend down until its circuit opens;
   a backlog of `--drain-size` messages is published straight into the destination queue
   with aio-pika (pipelined confirms, the headers QueuedMessage.to_amqp sets: the same
   queue content intake would produce, only faster to build), then the sink comes up and
   the drain is timed from the sink's first health answer to its last delivery: probe,
   half-open trial and slow-start ramp included. Gateway RSS is sampled throughout.
4. replay: `--replay-size` parked messages (published straight into the parking queue with
   parking headers) are moved back by `swgw replay`; timed as a whole command (start-up
   included) with the gateway stopped, so nothing else competes.

    .venv/bin/python -m bench [--runs 3] [--drain-size 100000] [--replay-size 100000]
                              [--workers N] [--only intake,drain,...] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import report
from bench.backlog import depth, publish_backlog
from bench.common import (
    ADMIN_TOKEN,
    ROOT,
    TOKEN,
    delete_topology,
    free_port,
    gateway_toml,
    load_average,
    parking_name,
    purge,
    queue_name,
    rss_mb,
    split_payload,
    summary,
    wait_http,
)
from bench.phases import CpuMeter, Phases, _median
from bench.procs import PYTHON, SWGW, Proc

RESULTS = ROOT / "bench" / "results"
PG_DSN = "postgresql://swgw:swgw@127.0.0.1:5432/swgw_test"  # the tests' database (tests/helpers.py)
PHASES = ("validation", "intake", "drain", "replay", "backlog", "scale", "outage")
DEFAULT_PHASES = ("validation", "intake", "drain", "replay", "backlog", "scale")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Bench(Phases):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="swgw-bench-"))
        self.results: dict[str, Any] = {}
        self.procs: list[Proc] = []
        self.ceiling_queue = f"{self.prefix}.ceiling"
        self.gw_port, self.admin_port, self.sink_port, self.ceiling_port = (free_port() for _ in range(4))
        self.config = self.tmp / "gateway.toml"
        self.config.write_text(
            gateway_toml(
                self.prefix,
                self.gw_port,
                self.sink_port,
                self.tmp / "dedup.sqlite3",
                admin_port=self.admin_port,
                dedup=args.dedup,
            )
        )
        self.pg_config: Path | None = None
        self.pg_port = free_port()
        self.pg_table = f"bench_{self.prefix[6:]}"
        if args.pg_dsn:
            self.pg_config = self.tmp / "gateway-pg.toml"
            self.pg_config.write_text(
                gateway_toml(
                    self.prefix, self.pg_port, self.sink_port, self.tmp / "unused.sqlite3",
                    admin_port=free_port(), dedup="postgres", dsn=args.pg_dsn, table=self.pg_table,
                )
            )  # fmt: skip
        pre, post = split_payload()
        (self.tmp / "pre").write_bytes(pre)
        (self.tmp / "post").write_bytes(post)
        self.wrk = shutil.which("wrk")

    # -- processes ---------------------------------------------------------------------
    def start(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.tmp)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def gateway(
        self, role: str, workers: int | None = None, *, config: Path | None = None, port: int | None = None
    ) -> Proc:
        argv = [SWGW, "serve", "--config", str(config or self.config), "--role", role]
        workers = self.args.workers if workers is None else workers
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = self.start(f"gateway-{role}", argv)
        try:
            asyncio.run(wait_http(f"http://127.0.0.1:{port or self.gw_port}/readyz", timeout_s=60))
        except TimeoutError:
            raise RuntimeError(f"gateway did not become ready:\n{proc.tail()}") from None
        return proc

    def ceiling(self) -> Proc:
        argv = [PYTHON, "-m", "bench.ceiling", "--port", str(self.ceiling_port), "--queue", self.ceiling_queue]
        argv += ["--workers", str(self.args.workers)]
        proc = self.start("ceiling", argv)
        asyncio.run(wait_http(f"http://127.0.0.1:{self.ceiling_port}/healthz", timeout_s=60))
        return proc

    def sink(self) -> Proc:
        proc = self.start("sink", [PYTHON, "-m", "bench.sink", "--port", str(self.sink_port)])
        return proc

    def cleanup(self) -> None:
        for proc in list(self.procs):
            proc.stop()
        self.procs.clear()
        with contextlib.suppress(Exception):
            asyncio.run(delete_topology(self.prefix, [self.ceiling_queue]))
        if self.args.pg_dsn:
            with contextlib.suppress(Exception):
                asyncio.run(_drop_pg(self.args.pg_dsn, self.pg_table))
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- load --------------------------------------------------------------------------
    def saturate(self, port: int, duration_s: float) -> float:
        """202/s with 64 connections for `duration_s` (wrk; closed-loop generator without it)."""
        url = f"http://127.0.0.1:{port}"
        conns = self.args.connections
        if self.wrk:
            env = {
                **os.environ,
                "BENCH_PRE_FILE": str(self.tmp / "pre"),
                "BENCH_POST_FILE": str(self.tmp / "post"),
                "BENCH_RUN_ID": uuid.uuid4().hex[:10],
                "BENCH_TOKEN": TOKEN,
            }
            out = subprocess.run(
                [self.wrk, "-t1", f"-c{conns}", f"-d{duration_s:g}s", "--timeout", "30s", "-s",
                 str(ROOT / "bench" / "wrk_post.lua"), url],
                capture_output=True, text=True, env=env, check=True,
            ).stdout  # fmt: skip
            m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
            if not m:
                raise RuntimeError(f"cannot read wrk output:\n{out}")
            requests, secs = int(m.group(1)), float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            errors = re.search(r"Socket errors: .*", out)
            if bad or errors:
                log(f"  wrk: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}")
            return (requests - (int(bad.group(1)) if bad else 0)) / secs
        result = self.loadgen(["closed", "--url", f"{url}/v1/messages", "--connections", str(conns),
                               "--duration", str(duration_s), "--warmup", "0", "--procs", "2"])  # fmt: skip
        return float(result["accepted_per_s"])

    def loadgen(self, argv: list[str]) -> dict[str, Any]:
        out = subprocess.run(
            [PYTHON, "-m", "bench.loadgen", *argv], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    def open_loop(self, port: int, rate: float) -> dict[str, Any]:
        procs = 1 if rate <= 300 else 2
        return self.loadgen(
            ["open", "--url", f"http://127.0.0.1:{port}/v1/messages", "--rate", str(rate),
             "--duration", str(self.args.latency_s), "--warmup", "2", "--procs", str(procs)]
        )  # fmt: skip

    # -- phases ------------------------------------------------------------------------
    def phase_validation(self) -> None:
        log("validation: bench/bench_validation.py")
        out = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "bench_validation.py"), "--runs", "3", "--min-time", "0.2"],
            capture_output=True, text=True, cwd=ROOT, check=True,
        ).stdout  # fmt: skip
        self.results["validation"] = {"text": out}
        print(out)

    def phase_intake(self) -> None:
        """Saturation, then open-loop latency at half the ceiling's saturation rate, servers alternating."""
        log(f"intake: ceiling and gateway, {self.args.workers} process(es) each")
        procs = {"ceiling": self.ceiling(), "gateway": self.gateway("ingress")}
        servers = {"ceiling": self.ceiling_port, "gateway": self.gw_port}
        if self.pg_config is not None:
            procs["gateway_pg"] = self.gateway("ingress", config=self.pg_config, port=self.pg_port)
            servers["gateway_pg"] = self.pg_port
        queues = [self.ceiling_queue, queue_name(self.prefix)]
        sat: dict[str, list[float]] = {n: [] for n in servers}
        cpu: dict[str, list[dict[str, float | None]]] = {n: [] for n in servers}
        lat: dict[str, list[dict[str, Any]]] = {n: [] for n in servers if n != "gateway_pg"}
        names = list(servers)
        try:
            for port in servers.values():  # warm-up, not measured
                self.saturate(port, 3)
            asyncio.run(purge(queues))
            for run in range(self.args.runs):
                for name in names if run % 2 == 0 else names[::-1]:
                    profile = None
                    if name == "gateway" and run == 0 and self.args.profile:
                        profile = self.start_profile(procs[name], "intake")
                    meter = CpuMeter(procs[name].pid)
                    meter.start()
                    rate = self.saturate(servers[name], self.args.saturation_s)
                    cpu[name].append(meter.stop(rate * self.args.saturation_s))
                    if profile is not None:
                        profile()
                    sat[name].append(rate)
                    c = cpu[name][-1]
                    log(
                        f"  run {run + 1}: {name} saturation {rate:,.0f}/s; CPU per message "
                        f"{c['proc_ms_per_msg'] or 0:.3f} ms, RabbitMQ {c['rabbit_ms_per_msg'] or 0:.3f} ms"
                    )
                    asyncio.run(purge(queues))
            half = summary(sat["ceiling"])["median"] / 2
            log(f"  open loop at {half:,.0f}/s (half the ceiling's saturation rate)")
            for name in lat:
                self.open_loop(servers[name], half)  # warm-up at this rate
            for run in range(self.args.runs):
                for name in list(lat) if run % 2 == 0 else list(lat)[::-1]:
                    r = self.open_loop(servers[name], half)
                    lat[name].append(r)
                    log(
                        f"  run {run + 1}: {name} @{half:,.0f}/s p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} "
                        f"max {r['max_ms']:.1f} ms, {r['accepted']}/{r['requests']} accepted, "
                        f"generator lag p99 {r['lag_p99_ms']:.1f} ms"
                    )
                    asyncio.run(purge(queues))
            gw_rss = rss_mb(procs["gateway"].pid)
        finally:
            for proc in procs.values():
                self.stop(proc)
        self.results["intake"] = {
            "saturation": {n: summary(v) for n, v in sat.items()},
            "cpu_ms_per_msg": {
                n: {k: _median([c[k] for c in v]) for k in ("proc_ms_per_msg", "rabbit_ms_per_msg")}
                for n, v in cpu.items()
            },
            "half_rate": half,
            "latency": {
                n: {k: summary([r[k] for r in runs]) for k in ("p50_ms", "p99_ms", "max_ms", "lag_p99_ms")}
                | {"accepted": sum(r["accepted"] for r in runs), "requests": sum(r["requests"] for r in runs)}
                for n, runs in lat.items()
            },
            "gateway_rss_mb": gw_rss[0],
            "connections": self.args.connections,
            "load_generator": "wrk" if self.wrk else "bench.loadgen closed",
        }

    def start_profile(self, proc: Proc, name: str, duration_s: float | None = None) -> Callable[[], None] | None:
        spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        if not Path(spy).exists():
            log("  --profile: py-spy not installed (pip install py-spy); skipped")
            return None
        out = RESULTS / f"profile-{name}.txt"
        p = subprocess.Popen(
            [spy, "record", "--pid", str(proc.pid), "--subprocesses", "--format", "raw", "--rate", "200",
             "--output", str(out), "--duration", str(int(duration_s or self.args.saturation_s))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def finish() -> None:
            p.wait(60)
            if out.exists():
                report.write_profile_summary(out, RESULTS / f"profile-{name}.md")
                log(f"  profile: {out.relative_to(ROOT)} and its summary profile-{name}.md")

        return finish

    def phase_outage(self) -> None:
        """The drain after an outage: circuit open, backlog, sink up; probe, trial and slow start included."""
        size = self.args.drain_size
        log(f"outage drain: backlog of {size:,} with the backend down, then the sink comes up")
        gw = self.gateway("all")
        pids = [gw.pid, *_children(gw.pid)]
        samples: list[tuple[float, str, float]] = []  # (t, stage, total RSS MB)

        def sample(stage: str) -> float:
            total = sum(rss_mb(p)[0] for p in pids)
            samples.append((time.monotonic(), stage, total))
            return total

        try:
            asyncio.run(self._wait_circuit("open", seed=True))
            before = sample("before")
            t0 = time.monotonic()
            asyncio.run(publish_backlog(queue_name(self.prefix), self.prefix, size, parked=False))
            built_s = time.monotonic() - t0
            log(f"  backlog of {size:,} published in {built_s:.1f}s ({size / built_s:,.0f}/s, pipelined confirms)")
            time.sleep(3)
            sitting = max(sample("backlog sitting") for _ in range(3))
            queued = asyncio.run(depth(queue_name(self.prefix)))  # the backlog plus the seed message
            if queued != size + 1:
                log(f"  note: {queued:,} messages in the queue, expected {size + 1:,}; timing the drain of all of them")
            sink = self.sink()
            asyncio.run(wait_http(f"http://127.0.0.1:{self.sink_port}/health", timeout_s=30))
            t_up = time.monotonic()
            profile = self.start_profile(gw, "drain", 20) if self.args.profile else None
            first, done = asyncio.run(self._wait_delivered(queued, lambda: sample("draining")))
            drain_s = done - t_up
            if profile is not None:
                profile()
            time.sleep(1)
            after = sample("after")
            hwm = sum(rss_mb(p)[1] for p in pids)
        finally:
            self.stop(gw)
            with contextlib.suppress(UnboundLocalError):
                self.stop(sink)
            asyncio.run(purge([queue_name(self.prefix), parking_name(self.prefix)]))
        during = [s for _, st, s in samples if st == "draining"]
        self.results["outage"] = {
            "size": size,
            "queued": queued,
            "drain_s": drain_s,
            "msg_per_s": queued / drain_s,
            "first_delivery_s": first - t_up,
            "backlog_publish_per_s": size / built_s,
            "rss_mb": {
                "before": before,
                "backlog_sitting": sitting,
                "during_peak": max(during) if during else None,
                "after": after,
                "hwm": hwm,
            },
            "rss_samples": [(round(t - samples[0][0], 2), st, round(v, 1)) for t, st, v in samples],
        }
        log(
            f"  drained {queued:,} in {drain_s:.1f}s = {queued / drain_s:,.0f}/s (first delivery after "
            f"{first - t_up:.1f}s); RSS MB before {before:.0f}, backlog {sitting:.0f}, "
            f"peak {max(during) if during else 0:.0f}, after {after:.0f}"
        )

    async def _wait_circuit(self, state: str, *, seed: bool) -> None:
        """Seed one message so delivery fails until the circuit opens; wait for `state`."""
        if seed:
            await publish_backlog(queue_name(self.prefix), self.prefix, 1, parked=False)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        url = f"http://127.0.0.1:{self.admin_port}/admin/destinations"
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                async with session.get(url, headers=headers) as resp:
                    rows = (await resp.json())["destinations"]
                if rows and rows[0].get("circuit") == state:
                    return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"circuit never became {state}")

    async def _wait_delivered(self, count: int, on_tick: Callable[[], float]) -> tuple[float, float]:
        url = f"http://127.0.0.1:{self.sink_port}/count"
        first = None
        last_tick = 0.0
        deadline = time.monotonic() + max(600, count / 200)
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                async with session.get(url) as resp:
                    n = (await resp.json())["count"]
                now = time.monotonic()
                if n and first is None:
                    first = now
                if n >= count:
                    return first or now, now
                if now - last_tick >= 0.5:
                    on_tick()
                    last_tick = now
                await asyncio.sleep(0.05)
        raise TimeoutError(f"the sink got fewer than {count} messages in time")


async def _drop_pg(dsn: str, table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}_events"; DROP TABLE IF EXISTS "{table}"')
    finally:
        await conn.close()


def _children(pid: int) -> list[int]:
    from bench.common import children_of

    return children_of(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per intake figure (median reported)")
    parser.add_argument("--saturation-s", type=float, default=10.0, help="seconds per saturation run")
    parser.add_argument("--latency-s", type=float, default=10.0, help="measured seconds per open-loop run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--drain-size", type=int, default=100_000)
    parser.add_argument("--replay-size", type=int, default=100_000)
    parser.add_argument(
        "--workers", type=int, default=report.DEFAULT_WORKERS, help="gateway (and ceiling) processes sharing the port"
    )
    parser.add_argument(
        "--dedup", choices=("sqlite", "none"), default="sqlite", help="gateway dedup store (none: to see its cost)"
    )
    parser.add_argument("--backlog-size", type=int, default=1_000_000, help="messages waiting in the backlog phase")
    parser.add_argument("--scale", default="1,2,4", help="gateway process counts for the scale phase")
    parser.add_argument("--scale-runs", type=int, default=1, help="saturation runs per process count")
    parser.add_argument("--half-rate", type=float, default=None, help="open-loop rate of the backlog phase "
                        "when the intake phase does not run (default: half the ceiling's saturation rate)")  # fmt: skip
    parser.add_argument(
        "--pg-dsn", default=os.environ.get("SWGW_BENCH_PG_DSN", PG_DSN),
        help="PostgreSQL for a second gateway in the intake phase (a table of its own, dropped after); '' = none",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: 1 run, 3 s per load, 2,000-message drain/replay/backlog, scale 1,2",
    )  # fmt: skip
    parser.add_argument(
        "--only", default=",".join(DEFAULT_PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (outage: the drain after an outage, slow start included)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway's first saturation run and drain")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and process logs")
    parser.add_argument("--output", default="latest", help="results file stem under bench/results/")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.saturation_s, args.latency_s, args.scale = 1, 3.0, 3.0, "1,2"
        args.drain_size = args.replay_size = args.backlog_size = 2_000
    if args.pg_dsn and not _pg_reachable(args.pg_dsn):
        log(f"PostgreSQL not reachable at {args.pg_dsn.split('@')[-1]}: the intake phase runs without it")
        args.pg_dsn = ""
    phases = [p for p in args.only.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    started = time.monotonic()
    load_before = load_average()
    log(
        f"prefix {bench.prefix}, logs in {bench.tmp}, {os.cpu_count()} CPUs, wrk: {bench.wrk or 'not found'}, "
        f"load average {load_before}"
    )
    try:
        for phase in PHASES:
            if phase in phases:
                getattr(bench, f"phase_{phase}")()
    finally:
        bench.cleanup()
    bench.results["meta"] = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": time.monotonic() - started,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "workers": args.workers,
        "runs": args.runs,
        "dedup": args.dedup,
        "postgres": bool(args.pg_dsn),
        "git": _git_rev(),
        "load_average": {"before": load_before, "after": load_average()},
    }
    md = report.markdown(bench.results)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
    (RESULTS / f"{args.output}.md").write_text(md)
    print()
    print(md)
    return 0


def _pg_reachable(dsn: str) -> bool:
    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def _git_rev() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    return "unknown"
