"""The suite's phases against naive ceilings (issue 17): drain, replay, backlog flatness, scale.

A mixin of bench/suite.py's Bench (it owns the processes, ports and config):
- drain: `--drain-size` messages published straight into the destination queue, the sink up,
  then either the gateway (`swgw serve --role all`) or the naive delivery ceiling
  (bench/naive.py drain: consume with a prefetch window, POST, ack; no circuit, no journal)
  starts and drains it; both timed from the sink's first count to its last. Alternating
  (naive, gateway, gateway, naive, ...), `--runs` each, medians compared. CPU seconds of the
  consumer and of RabbitMQ per message; gateway RSS sampled throughout.
- replay: `--replay-size` parked messages, moved back either by `swgw replay` or by the naive
  move ceiling (bench/naive.py move: consume, publish with pipelined confirms, ack); both
  timed as whole commands. Alternating, medians compared.
- backlog: intake saturation and open-loop p99 (at half the ceiling's saturation rate) with
  the destination queue empty, then with `--backlog-size` messages waiting in it, then again
  with it full, then empty (E F F E: linear drift cancels). Gateway RSS with each.
- scale: intake saturation with `swgw serve --workers N` for N in `--scale` (1,2,4), with
  the CPU per accepted message of the gateway's processes and of RabbitMQ's beam.smp.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from typing import TYPE_CHECKING, Any

from bench.backlog import declare_topology, depth, publish_backlog
from bench.common import (
    DEST,
    ROOT,
    children_of,
    cpu_s,
    parking_name,
    purge,
    queue_name,
    rabbit_pid,
    rss_mb,
    summary,
    tree_cpu_s,
    wait_http,
)
from bench.procs import PYTHON, SWGW

if TYPE_CHECKING:
    from bench.procs import Proc


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def alternate(runs: int, kinds: tuple[str, str]) -> list[str]:
    """(a, b), (b, a), (a, b), ...: each kind first as often as second, so drift hits both alike."""
    out: list[str] = []
    for run in range(runs):
        out += list(kinds if run % 2 == 0 else kinds[::-1])
    return out


class CpuMeter:
    """CPU seconds of a process tree and of RabbitMQ between start() and stop()."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.rabbit = rabbit_pid()
        self._t0 = (0.0, 0.0)

    def _now(self) -> tuple[float, float]:
        mine = tree_cpu_s(self.pid) if self.pid else 0.0
        return mine, cpu_s(self.rabbit) if self.rabbit else 0.0

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self, messages: float) -> dict[str, float | None]:
        mine, rabbit = self._now()
        n = max(messages, 1.0)
        return {
            "proc_ms_per_msg": 1000 * (mine - self._t0[0]) / n if self.pid else None,
            "rabbit_ms_per_msg": 1000 * (rabbit - self._t0[1]) / n if self.rabbit else None,
        }


class Phases:
    """Mixed into Bench; the attributes below are Bench's."""

    if TYPE_CHECKING:
        from argparse import Namespace
        from pathlib import Path

        args: Namespace
        prefix: str
        config: Path
        sink_port: int
        gw_port: int
        results: dict[str, Any]

        def start(self, name: str, argv: list[str]) -> Proc: ...
        def stop(self, proc: Proc) -> None: ...
        def sink(self) -> Proc: ...
        def gateway(self, role: str, workers: int | None = None) -> Proc: ...
        def saturate(self, port: int, duration_s: float) -> float: ...
        def open_loop(self, port: int, rate: float) -> dict[str, Any]: ...
        async def _wait_delivered(self, count: int, on_tick: Any) -> tuple[float, float]: ...

    # -- drain ---------------------------------------------------------------------------
    def phase_drain(self) -> None:
        size = self.args.drain_size
        _log(f"drain: {size:,} queued, the sink up; naive delivery ceiling and gateway alternating")
        runs: dict[str, list[dict[str, Any]]] = {"naive": [], "gateway": []}
        for kind in alternate(self.args.runs, ("naive", "gateway")):
            r = self._drain_run(kind, size)
            runs[kind].append(r)
            _log(
                f"  {kind}: {size:,} in {r['seconds']:.1f}s = {r['msg_per_s']:,.0f}/s; CPU per message "
                f"{r['proc_ms_per_msg']:.3f} ms, RabbitMQ {r['rabbit_ms_per_msg'] or 0:.3f} ms"
                + (
                    f"; RSS MB {r['rss_mb']['before']:.0f} -> peak {r['rss_mb']['peak']:.0f}"
                    if kind == "gateway"
                    else ""
                )
            )
        self.results["drain"] = _summarise(runs, size)

    def _drain_run(self, kind: str, size: int) -> dict[str, Any]:
        sink = self.sink()
        proc = None
        try:
            asyncio.run(wait_http(f"http://127.0.0.1:{self.sink_port}/health", timeout_s=30))
            asyncio.run(declare_topology(self.config))
            asyncio.run(publish_backlog(queue_name(self.prefix), self.prefix, size, parked=False))
            if kind == "gateway":
                proc = self.gateway("all")
            else:
                proc = self.start(
                    "naive-drain",
                    [PYTHON, "-m", "bench.naive", "drain", "--queue", queue_name(self.prefix), "--count", str(size),
                     "--url", f"http://127.0.0.1:{self.sink_port}/inbound", "--prefetch", "64"],
                )  # fmt: skip
            meter = CpuMeter(proc.pid)
            meter.start()
            pids = [proc.pid, *children_of(proc.pid)]
            rss: list[float] = [sum(rss_mb(p)[0] for p in pids)]
            profile = None
            if kind == "gateway" and self.args.profile and not runs_profiled(self, "drain"):
                profile = self.start_profile(proc, "drain", 20)  # type: ignore[attr-defined]

            def tick() -> float:
                rss.append(sum(rss_mb(p)[0] for p in pids))
                return rss[-1]

            first, done = asyncio.run(self._wait_delivered(size, tick))
            cpu = meter.stop(size)
            if profile is not None:
                profile()
        finally:
            if proc is not None:
                self.stop(proc)
            self.stop(sink)
            asyncio.run(purge([queue_name(self.prefix), parking_name(self.prefix)]))
        seconds = done - first
        return {
            "seconds": seconds,
            "msg_per_s": size / seconds,
            **cpu,
            "rss_mb": {"before": rss[0], "peak": max(rss), "after": rss[-1]},
        }

    # -- replay --------------------------------------------------------------------------
    def phase_replay(self) -> None:
        size = self.args.replay_size
        _log(f"replay: {size:,} parked; naive move ceiling and swgw replay alternating")
        asyncio.run(declare_topology(self.config))  # the gateway is not running: declare here
        runs: dict[str, list[dict[str, Any]]] = {"naive": [], "gateway": []}
        for kind in alternate(self.args.runs, ("naive", "gateway")):
            r = self._replay_once(kind, size)
            runs[kind].append(r)
            _log(
                f"  {kind}: {size:,} in {r['seconds']:.1f}s = {r['msg_per_s']:,.0f}/s (whole command); CPU per "
                f"message {r['proc_ms_per_msg']:.3f} ms, RabbitMQ {r['rabbit_ms_per_msg'] or 0:.3f} ms"
            )
        self.results["replay"] = _summarise(runs, size)

    def _replay_once(self, kind: str, size: int) -> dict[str, Any]:
        asyncio.run(purge([queue_name(self.prefix), parking_name(self.prefix)]))
        asyncio.run(publish_backlog(parking_name(self.prefix), self.prefix, size, parked=True))
        if kind == "gateway":
            argv = [SWGW, "replay", "--config", str(self.config), "--destination", DEST]
        else:
            argv = [PYTHON, "-m", "bench.naive", "move", "--source", parking_name(self.prefix),
                    "--target", queue_name(self.prefix), "--count", str(size), "--prefetch", "256"]  # fmt: skip
        rabbit = rabbit_pid()
        r0 = cpu_s(rabbit) if rabbit else 0.0
        _child_cpu_s()  # from here on: this command's CPU only
        t0 = time.monotonic()
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        out, err = popen.communicate(timeout=3600)
        seconds = time.monotonic() - t0
        if popen.returncode != 0:
            raise RuntimeError(f"{kind} replay failed:\n{out[-2000:]}\n{err[-2000:]}")
        usage = _child_cpu_s()
        moved = asyncio.run(depth(queue_name(self.prefix)))
        if moved != size:
            _log(f"  note: {moved:,} in the destination queue after the {kind} move, expected {size:,}")
        asyncio.run(purge([queue_name(self.prefix), parking_name(self.prefix)]))
        return {
            "seconds": seconds,
            "msg_per_s": size / seconds,
            "proc_ms_per_msg": 1000 * usage / size,
            "rabbit_ms_per_msg": 1000 * (cpu_s(rabbit) - r0) / size if rabbit else None,
        }

    # -- backlog flatness ----------------------------------------------------------------
    def phase_backlog(self) -> None:
        size = self.args.backlog_size
        rate = self._half_rate()
        _log(f"backlog: intake with the queue empty and with {size:,} waiting (E F F E); open loop at {rate:,.0f}/s")
        gw = self.gateway("ingress")
        pids = [gw.pid, *children_of(gw.pid)]
        res: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
        fill_s = 0.0
        try:
            self.saturate(self.gw_port, 3)  # warm-up
            asyncio.run(purge([queue_name(self.prefix)]))
            for step in ("empty", "fill", "full", "full", "purge", "empty"):
                if step == "fill":
                    t0 = time.monotonic()
                    asyncio.run(publish_backlog(queue_name(self.prefix), self.prefix, size, parked=False))
                    fill_s = time.monotonic() - t0
                    _log(f"  {size:,} published in {fill_s:.0f}s ({size / fill_s:,.0f}/s)")
                    continue
                if step == "purge":
                    asyncio.run(purge([queue_name(self.prefix)]))
                    continue
                waiting = asyncio.run(depth(queue_name(self.prefix)))
                meter = CpuMeter(gw.pid)
                meter.start()
                sat = self.saturate(self.gw_port, self.args.saturation_s)
                cpu = meter.stop(sat * self.args.saturation_s)
                rss = sum(rss_mb(p)[0] for p in pids)  # after saturation, before the open loop
                lat = self.open_loop(self.gw_port, rate)
                rss_after = sum(rss_mb(p)[0] for p in pids)
                res[step].append(
                    {"saturation": sat, "p99_ms": lat["p99_ms"], "rss_mb": rss, "rss_after_open_loop_mb": rss_after,
                     "waiting": waiting, "gateway_ms_per_msg": cpu["proc_ms_per_msg"],
                     "rabbit_ms_per_msg": cpu["rabbit_ms_per_msg"]}
                )  # fmt: skip
                _log(
                    f"  {step} ({waiting:,} waiting): saturation {sat:,.0f}/s (CPU per message gateway "
                    f"{cpu['proc_ms_per_msg'] or 0:.3f} ms, RabbitMQ {cpu['rabbit_ms_per_msg'] or 0:.3f} ms), "
                    f"p99 {lat['p99_ms']:.1f} ms at {rate:,.0f}/s, RSS {rss:.0f} MB ({rss_after:.0f} after it)"
                )
        finally:
            self.stop(gw)
            asyncio.run(purge([queue_name(self.prefix)]))
        self.results["backlog"] = {
            "size": size,
            "fill_per_s": size / fill_s if fill_s else None,
            "rate": rate,
            **{
                k: {
                    m: summary([r[m] or 0.0 for r in v])
                    for m in (
                        "saturation",
                        "p99_ms",
                        "rss_mb",
                        "rss_after_open_loop_mb",
                        "gateway_ms_per_msg",
                        "rabbit_ms_per_msg",
                    )
                }
                | {"waiting": [r["waiting"] for r in v]}
                for k, v in res.items()
            },
        }

    def _half_rate(self) -> float:
        intake = self.results.get("intake")
        if intake:
            return float(intake["half_rate"])
        return float(self.args.half_rate or 500.0)

    # -- scale ---------------------------------------------------------------------------
    def phase_scale(self) -> None:
        counts = [int(n) for n in self.args.scale.split(",") if n]
        _log(f"scale: intake saturation with {', '.join(map(str, counts))} gateway process(es)")
        out: dict[str, Any] = {}
        for n in counts:
            gw = self.gateway("ingress", workers=n)
            try:
                self.saturate(self.gw_port, 3)  # warm-up
                asyncio.run(purge([queue_name(self.prefix)]))
                rates, cpus = [], []
                for _ in range(self.args.scale_runs):
                    meter = CpuMeter(gw.pid)
                    meter.start()
                    rate = self.saturate(self.gw_port, self.args.saturation_s)
                    cpus.append(meter.stop(rate * self.args.saturation_s))
                    rates.append(rate)
                    asyncio.run(purge([queue_name(self.prefix)]))
            finally:
                self.stop(gw)
            out[str(n)] = {
                "saturation": summary(rates),
                "gateway_ms_per_msg": statistics.median(c["proc_ms_per_msg"] or 0.0 for c in cpus),
                "rabbit_ms_per_msg": statistics.median(c["rabbit_ms_per_msg"] or 0.0 for c in cpus),
            }
            _log(
                f"  {n} process(es): {out[str(n)]['saturation']['median']:,.0f}/s; CPU per message gateway "
                f"{out[str(n)]['gateway_ms_per_msg']:.3f} ms, RabbitMQ {out[str(n)]['rabbit_ms_per_msg']:.3f} ms"
            )
        self.results["scale"] = out


def runs_profiled(bench: Any, name: str) -> bool:
    """Profile only the first run of a kind."""
    done: set[str] = bench.__dict__.setdefault("_profiled", set())
    if name in done:
        return True
    done.add(name)
    return False


def _child_cpu_s() -> float:
    """CPU seconds of the children waited for since the last call (RUSAGE_CHILDREN grows only)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    last = _child_cpu_s.__dict__.get("last", 0.0)
    _child_cpu_s.__dict__["last"] = total
    return float(total - last)


def _summarise(runs: dict[str, list[dict[str, Any]]], size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"size": size}
    for kind, rs in runs.items():
        out[kind] = {
            "msg_per_s": summary([r["msg_per_s"] for r in rs]),
            "seconds": summary([r["seconds"] for r in rs]),
            "proc_ms_per_msg": _median([r.get("proc_ms_per_msg") for r in rs]),
            "rabbit_ms_per_msg": _median([r.get("rabbit_ms_per_msg") for r in rs]),
        }
        if rs and "rss_mb" in rs[0]:
            out[kind]["rss_mb"] = {
                "before": max(r["rss_mb"]["before"] for r in rs),
                "peak": max(r["rss_mb"]["peak"] for r in rs),
                "after": max(r["rss_mb"]["after"] for r in rs),
            }
    return out


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
