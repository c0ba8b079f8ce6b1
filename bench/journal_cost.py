"""What the journal costs: intake saturation and a drain with the journal on and off, in one run.

    .venv/bin/python -m bench.journal_cost [--runs 3] [--saturation-s 10] [--drain-size 20000]

Both modes use the same gateway, the same SQLite store of seen ids (`[dedup] backend =
"sqlite"`, a fresh file per mode) and the same load; only `[journal] enabled` differs.
Intake: `swgw serve --role ingress`, one warm-up run per mode, then `--runs` measured runs
with the modes alternating (on, off, off, on, ...) so drift on a shared 2-core machine hits
both alike; the median of each mode is compared. Drain: the counting sink is up, a backlog
of `--drain-size` messages is published straight into the destination queue, then
`swgw serve --role all` starts and the drain is timed from the sink's first count to its
last (start-up excluded); `--runs` drains per mode, alternating, median compared. With the
journal on, every delivery commits its delivered event before the ack (attempts are posted;
commits are grouped per event-loop tick). Target (issue 13): the journal costs at most 10%
of each. Results go to bench/results/journal-cost.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.backlog import declare_topology, publish_backlog
from bench.common import gateway_toml, purge, queue_name, wait_http
from bench.suite import RESULTS, Bench, _git_rev, log

TARGET = 0.10  # the journal may cost at most 10% of intake throughput and of the drain rate
MODES = ("on", "off")


class JournalBench(Bench):
    """The suite's Bench with one config per journal mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.configs: dict[str, Path] = {}
        for mode in MODES:
            path = self.tmp / f"gateway-journal-{mode}.toml"
            text = gateway_toml(
                self.prefix,
                self.gw_port,
                self.sink_port,
                self.tmp / f"store-{mode}.sqlite3",
                admin_port=self.admin_port,
            )
            path.write_text(text + f"\n[journal]\nenabled = {'true' if mode == 'on' else 'false'}\n")
            self.configs[mode] = path

    def use(self, mode: str) -> None:
        self.config = self.configs[mode]

    def intake(self) -> dict[str, Any]:
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        order = [MODES if run % 2 == 0 else MODES[::-1] for run in range(self.args.runs)]
        for mode in MODES:  # warm-up, not measured
            self.use(mode)
            gw = self.gateway("ingress")
            self.saturate(self.gw_port, 3)
            self.stop(gw)
            asyncio.run(purge([queue_name(self.prefix)]))
        for run, modes in enumerate(order):
            for mode in modes:
                self.use(mode)
                gw = self.gateway("ingress")
                try:
                    rate = self.saturate(self.gw_port, self.args.saturation_s)
                finally:
                    self.stop(gw)
                    asyncio.run(purge([queue_name(self.prefix)]))
                rates[mode].append(rate)
                log(f"  run {run + 1}: intake, journal {mode}: {rate:,.0f}/s")
        return {m: {"median": statistics.median(v), "runs": v} for m, v in rates.items()}

    def drain(self) -> dict[str, Any]:
        size = self.args.drain_size
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        order = [MODES if run % 2 == 0 else MODES[::-1] for run in range(self.args.runs)]
        for run, modes in enumerate(order):
            for mode in modes:
                rate = self._drain_once(mode, size)
                rates[mode].append(rate)
                log(f"  run {run + 1}: drain of {size:,}, journal {mode}: {rate:,.0f}/s")
        return {m: {"msg_per_s": statistics.median(v), "runs": v} for m, v in rates.items()}

    def _drain_once(self, mode: str, size: int) -> float:
        """Messages per second from the first delivery to the last (start-up excluded)."""
        self.use(mode)
        sink = self.sink()
        asyncio.run(wait_http(f"http://127.0.0.1:{self.sink_port}/health", timeout_s=30))
        try:
            asyncio.run(declare_topology(self.config))
            asyncio.run(publish_backlog(queue_name(self.prefix), self.prefix, size, parked=False))
            gw = self.gateway("all")
            try:
                first, done = asyncio.run(self._wait_delivered(size, lambda: 0.0))
            finally:
                self.stop(gw)
        finally:
            self.stop(sink)
            asyncio.run(purge([queue_name(self.prefix)]))
        return size / (done - first)


def verdict(on: float, off: float) -> tuple[float, bool]:
    cost = 1.0 - on / off if off else 0.0
    return cost, cost <= TARGET


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The journal's cost",
        "",
        f"`{results['meta']['command']}` at {results['meta']['git']}, {results['meta']['date']}",
        "",
        "| figure | journal on | journal off | cost | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, key, unit in (("intake saturation", "intake", "median"), ("drain", "drain", "msg_per_s")):
        if key not in results:
            continue
        on, off = results[key]["on"][unit], results[key]["off"][unit]
        cost, met = verdict(on, off)
        lines.append(
            f"| {name} | {on:,.0f}/s | {off:,.0f}/s | {cost:.1%} | ≤ {TARGET:.0%} | {'yes' if met else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--saturation-s", type=float, default=10.0)
    parser.add_argument("--drain-size", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", default="intake,drain")
    parser.add_argument("--output", default="journal-cost")
    args = parser.parse_args(argv)
    # what Bench expects from the suite's options
    args.workers, args.dedup, args.keep_tmp, args.profile, args.latency_s = 1, "sqlite", False, False, 10.0
    bench = JournalBench(args)
    results: dict[str, Any] = {}
    try:
        if "intake" in args.only:
            log("intake saturation, journal on and off alternating")
            results["intake"] = bench.intake()
        if "drain" in args.only:
            log("drain, journal on and off")
            results["drain"] = bench.drain()
    finally:
        bench.cleanup()
    results["meta"] = {
        "command": "python -m bench.journal_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": _git_rev(),
    }
    md = markdown(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
