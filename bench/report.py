"""Turn the suite's results into the Markdown table (docs/performance.md) and profile summaries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

DEFAULT_WORKERS = 2  # `swgw serve --workers 2`: intake on both cores (the recommended setting here)

TARGETS = {  # issue 17: ratios to naive ceilings measured in the same run
    "intake_ratio": 1.0,  # gateway / ceiling saturation, SQLite stores
    "intake_ratio_pg": 0.9,  # the same with PostgreSQL stores
    "p99_ratio": 1.5,  # gateway p99 / ceiling p99 at half the ceiling's saturation rate
    "drain_ratio": 1.0,  # gateway drain / naive delivery ceiling
    "replay_ratio": 1.0,  # swgw replay / naive move ceiling
    "backlog_drift": 0.10,  # saturation and p99 with the backlog waiting, vs an empty queue
    "rss_mb": 200.0,
}


def _spread(s: dict[str, Any], fmt: str = "{:,.0f}") -> str:
    if s.get("median") is None:
        return "-"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str, bool | None]]:
    """(target, figure, ratio, wanted, met) for each target of issue 17 the results measure."""
    rows: list[tuple[str, str, str, str, bool | None]] = []
    intake = results.get("intake")
    if intake:
        sat = intake["saturation"]
        c = sat["ceiling"]["median"]
        for key, label, want in (
            ("gateway", "SQLite", "intake_ratio"),
            ("gateway_pg", "PostgreSQL", "intake_ratio_pg"),
        ):
            if key in sat:
                g = sat[key]["median"]
                r = g / c if c else 0.0
                rows.append(
                    (f"intake saturation, all features, {label} stores", f"{g:,.0f}/s vs ceiling {c:,.0f}/s",
                     f"{r:.2f}x", f">= {TARGETS[want]:.1f}x", r >= TARGETS[want])
                )  # fmt: skip
        lat = intake["latency"]
        gp, cp = lat["gateway"]["p99_ms"]["median"], lat["ceiling"]["p99_ms"]["median"]
        r = gp / cp if cp else float("inf")
        rows.append(
            (f"p99 at half the ceiling's rate ({intake['half_rate']:,.0f}/s, open loop)",
             f"{gp:.1f} ms vs ceiling {cp:.1f} ms", f"{r:.2f}x", f"<= {TARGETS['p99_ratio']:.1f}x",
             r <= TARGETS["p99_ratio"])
        )  # fmt: skip
    for key, label, want in (("drain", "drain", "drain_ratio"), ("replay", "replay", "replay_ratio")):
        d = results.get(key)
        if d:
            g, n = d["gateway"]["msg_per_s"]["median"], d["naive"]["msg_per_s"]["median"]
            r = g / n if n else 0.0
            rows.append(
                (f"{label} of {d['size']:,}", f"{g:,.0f}/s vs naive {n:,.0f}/s", f"{r:.2f}x",
                 f">= {TARGETS[want]:.1f}x", r >= TARGETS[want])
            )  # fmt: skip
    b = results.get("backlog")
    if b:
        es, fs = b["empty"]["saturation"]["median"], b["full"]["saturation"]["median"]
        ep, fp = b["empty"]["p99_ms"]["median"], b["full"]["p99_ms"]["median"]
        ds, dp = fs / es - 1 if es else 0.0, fp / ep - 1 if ep else 0.0
        drift = TARGETS["backlog_drift"]
        rows.append(
            (f"saturation with {b['size']:,} waiting", f"{fs:,.0f}/s vs empty {es:,.0f}/s", f"{fs / es:.2f}x",
             f"within {drift:.0%}", abs(ds) <= drift or ds > 0)
        )  # fmt: skip
        rows.append(
            (f"p99 with {b['size']:,} waiting (at {b['rate']:,.0f}/s)", f"{fp:.1f} ms vs empty {ep:.1f} ms",
             f"{fp / ep:.2f}x", f"within {drift:.0%}", abs(dp) <= drift or dp < 0)
        )  # fmt: skip
        key = "rss_after_open_loop_mb" if "rss_after_open_loop_mb" in b["empty"] else "rss_mb"
        rss = [v for k in ("empty", "full") for v in b[k][key]["runs"]]
        flat = max(rss) - min(rss) < 20
        rows.append(
            ("gateway RSS (2 processes), empty and full queue", f"{min(rss):.0f}-{max(rss):.0f} MB", "",
             f"< {TARGETS['rss_mb']:.0f} MB, flat", max(rss) < TARGETS["rss_mb"] and flat)
        )  # fmt: skip
    d = results.get("drain")
    if d and "rss_mb" in d["gateway"]:
        rss_d = d["gateway"]["rss_mb"]
        rows.append(
            ("gateway RSS during the drains", f"{rss_d['before']:.0f} -> peak {rss_d['peak']:.0f} MB", "",
             f"< {TARGETS['rss_mb']:.0f} MB, flat", rss_d["peak"] < TARGETS["rss_mb"])
        )  # fmt: skip
    scale = results.get("scale")
    if scale:
        fig = ", ".join(f"{n}: {v['saturation']['median']:,.0f}/s" for n, v in scale.items())
        rows.append(("intake with 1, 2, 4 processes, CPU per message", fig, "", "reported", True))
    return rows


def target_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target | figure | ratio | wanted | |", "|---|---|---:|---|---|"]
    for name, figure, ratio, want, met in targets(results):
        lines.append(f"| {name} | {figure} | {ratio} | {want} | {'MET' if met else '**MISSED**'} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    load = meta.get("load_average", {})
    lines = [
        "# swgw benchmark results",
        "",
        f"`{meta.get('command', 'python -m bench')}` at {meta.get('git', '?')}, {meta.get('date', '')}: "
        f"{meta.get('cpus', '?')} CPUs shared by gateway, RabbitMQ and load generators (and, on this machine, "
        f"other people's tests: load average {load.get('before', '?')} before, {load.get('after', '?')} after); "
        f"Python {meta.get('python', '?')}; gateway and ceiling with {meta.get('workers', 1)} process(es) each; "
        f"suite took {meta.get('wall_s', 0) / 60:.1f} min. Medians of {meta.get('runs', '?')} alternating runs, "
        "(min-max) in brackets, warm-up excluded. Payload: 8 KB CUSDEC envelope, unique MessageId per request.",
        "",
        "## Targets (issue 17): ratios to naive ceilings in the same run",
        "",
        *target_table(results),
        "",
    ]
    intake = results.get("intake")
    if intake:
        sat, cpu = intake["saturation"], intake.get("cpu_ms_per_msg", {})
        c = sat["ceiling"]["median"]
        lines += [
            f"## Intake ({intake['connections']} connections, {intake['load_generator']})",
            "",
            "| server | saturation (202/s) | / ceiling | CPU ms per message: server | RabbitMQ |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in sat.items():
            ratio = s["median"] / c if c else 0.0
            u = cpu.get(name, {})
            lines.append(
                f"| {name} | {_spread(s)} | {ratio:.2f}x | {_ms(u.get('proc_ms_per_msg'))} | "
                f"{_ms(u.get('rabbit_ms_per_msg'))} |"
            )
        lines += [
            "",
            f"Open loop at {intake['half_rate']:,.0f}/s (half the ceiling's saturation rate), ms:",
            "",
            "| server | p50 | p99 | max | accepted / sent | generator lag p99 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, lt in intake["latency"].items():
            lines.append(
                f"| {name} | {_spread(lt['p50_ms'], '{:.1f}')} | {_spread(lt['p99_ms'], '{:.1f}')} | "
                f"{_spread(lt['max_ms'], '{:.1f}')} | {lt['accepted']:,} / {lt['requests']:,} | "
                f"{_spread(lt['lag_p99_ms'], '{:.1f}')} |"
            )
        lines.append("")
    for key, title in (
        ("drain", "Drain (sink up, timed first to last delivery)"),
        ("replay", "Replay (whole command)"),
    ):
        d = results.get(key)
        if not d:
            continue
        lines += [
            f"## {title}: {d['size']:,} messages",
            "",
            "| | msg/s | seconds | CPU ms per message: process | RabbitMQ |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind in ("naive", "gateway"):
            k = d[kind]
            lines.append(
                f"| {kind} | {_spread(k['msg_per_s'])} | {_spread(k['seconds'], '{:.1f}')} | "
                f"{_ms(k['proc_ms_per_msg'])} | {_ms(k['rabbit_ms_per_msg'])} |"
            )
        lines.append("")
    b = results.get("backlog")
    if b:
        fill = f"{b['fill_per_s']:,.0f}/s" if b.get("fill_per_s") else "-"
        lines += [
            f"## Intake with {b['size']:,} waiting in the destination queue (filled at {fill}; order E F F E)",
            "",
            "| queue | saturation (202/s) | CPU ms per message: gateway | RabbitMQ | p99 at {:,.0f}/s (ms) "
            "| RSS MB after saturation | after the open loop |".format(b["rate"]),
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k in ("empty", "full"):
            v = b[k]
            gw_ms = v.get("gateway_ms_per_msg", {}).get("median")
            rmq_ms = v.get("rabbit_ms_per_msg", {}).get("median")
            after = _spread(v["rss_after_open_loop_mb"]) if "rss_after_open_loop_mb" in v else "-"
            lines.append(
                f"| {k} | {_spread(v['saturation'])} | {_ms(gw_ms)} | {_ms(rmq_ms)} | "
                f"{_spread(v['p99_ms'], '{:.1f}')} | {_spread(v['rss_mb'])} | {after} |"
            )
        lines.append("")
    scale = results.get("scale")
    if scale:
        lines += [
            "## Scale: intake saturation by gateway processes (`swgw serve --workers N`)",
            "",
            "| processes | saturation (202/s) | CPU ms per message: gateway | RabbitMQ |",
            "|---:|---:|---:|---:|",
        ]
        for n, v in scale.items():
            lines.append(
                f"| {n} | {_spread(v['saturation'])} | {_ms(v['gateway_ms_per_msg'])} | {_ms(v['rabbit_ms_per_msg'])} |"
            )
        lines.append("")
    outage = results.get("outage")
    if outage:
        rss = outage["rss_mb"]
        lines += [
            f"Drain after an outage (circuit open, then the sink up; probe, trial and slow start included): "
            f"{outage['msg_per_s']:,.0f}/s ({outage['drain_s']:.1f} s for {outage['queued']:,}); RSS MB before "
            f"{rss['before']:.0f}, backlog sitting {rss['backlog_sitting']:.0f}, peak {rss['during_peak'] or 0:.0f}.",
            "",
        ]
    validation = results.get("validation")
    if validation:
        text = validation["text"].rstrip()
        lines += ["Validation (bench/bench_validation.py, documents/s):", "", "```", text, "```"]
    lines.append("")
    return "\n".join(lines)


def write_profile_summary(raw: Path, out: Path, top: int = 30) -> None:
    """py-spy `--format raw` (collapsed stacks) → the top functions by own and by total time."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [f for f in stack.split(";") if f]
        if frames:
            own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            total[frame] += count
    rows = [f"# Profile summary: {raw.name}", "", f"{samples:,} samples (all gateway processes).", ""]
    for title, counter in (("own time (where the CPU is)", own), ("total time (inclusive)", total)):
        rows += [f"## Top {top} by {title}", "", "| % | function |", "|---:|---|"]
        for name, n in counter.most_common(top):
            rows.append(f"| {100 * n / max(samples, 1):.1f} | `{name}` |")
        rows.append("")
    out.write_text("\n".join(rows))


def _short(frame: str) -> str:
    """`func (path/to/module.py:123)` → `func (module.py)`: lines differ per call site."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({tail})"
