"""Turn the suite's results into the Markdown table (docs/performance.md) and profile summaries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

DEFAULT_WORKERS = 2  # `swgw serve --workers 2`: intake on both cores (the recommended setting here)

TARGETS = {
    "intake_ratio": 0.70,
    "intake_per_s": 2000.0,
    "p99_1000_ms": 30.0,
    "drain_per_s": 2500.0,
    "replay_per_s": 4000.0,
    "rss_mb": 200.0,
}


def _spread(s: dict[str, Any], fmt: str = "{:,.0f}") -> str:
    if s.get("median") is None:
        return "-"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def _ok(good: bool) -> str:
    return "met" if good else "**not met**"


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = [
        "# swgw benchmark results",
        "",
        f"`{meta.get('command', 'python -m bench')}` at {meta.get('git', '?')}, {meta.get('date', '')}: "
        f"{meta.get('cpus', '?')} CPUs shared by gateway, RabbitMQ and load generators; Python "
        f"{meta.get('python', '?')}; gateway and ceiling with {meta.get('workers', 1)} process(es) each; "
        f"suite took {meta.get('wall_s', 0) / 60:.1f} min. Medians of {meta.get('runs', '?')} runs, "
        "(min-max) in brackets, warm-up excluded. Payload: 8 KB CUSDEC envelope, unique MessageId per request.",
        "",
        "| figure | ceiling | gateway | gateway / ceiling | target | |",
        "|---|---:|---:|---:|---|---|",
    ]
    intake = results.get("intake")
    if intake:
        sat = intake["saturation"]
        c, g = sat["ceiling"]["median"], sat["gateway"]["median"]
        ratio = g / c if c else 0.0
        lines.append(
            f"| intake saturation, {intake['connections']} connections (202/s) | {_spread(sat['ceiling'])} | "
            f"{_spread(sat['gateway'])} | {ratio:.0%} | >= 70% and >= 2,000/s | "
            f"{_ok(ratio >= TARGETS['intake_ratio'] and g >= TARGETS['intake_per_s'])} |"
        )
        for rate in ("200", "1000"):
            lc, lg = intake["latency"]["ceiling"][rate], intake["latency"]["gateway"][rate]
            for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
                cv, gv = lc[key]["median"], lg[key]["median"]
                target, verdict = "", ""
                if rate == "1000" and key == "p99_ms":
                    target, verdict = "< 30 ms", _ok(gv < TARGETS["p99_1000_ms"])
                lines.append(
                    f"| latency {label} at {int(rate):,}/s offered, open loop (ms) | {_spread(lc[key], '{:.1f}')} | "
                    f"{_spread(lg[key], '{:.1f}')} | {gv / cv if cv else 0:.1f}x | {target} | {verdict} |"
                )
            lines.append(
                f"| accepted at {int(rate):,}/s offered (202 / sent) | {lc['accepted']:,} / {lc['requests']:,} | "
                f"{lg['accepted']:,} / {lg['requests']:,} | | | |"
            )
    drain = results.get("drain")
    if drain:
        rss = drain["rss_mb"]
        lines.append(
            f"| drain of {drain['size']:,} to a fast sink, slow start included (msg/s) | | "
            f"{drain['msg_per_s']:,.0f} ({drain['drain_s']:.1f} s; first delivery after "
            f"{drain['first_delivery_s']:.1f} s) | | >= 2,500/s | {_ok(drain['msg_per_s'] >= TARGETS['drain_per_s'])} |"
        )
        peak = max(v for v in (rss["before"], rss["backlog_sitting"], rss["during_peak"] or 0, rss["after"]))
        lines.append(
            f"| gateway RSS MB: before / backlog sitting / drain peak / after | | "
            f"{rss['before']:.0f} / {rss['backlog_sitting']:.0f} / {rss['during_peak'] or 0:.0f} / {rss['after']:.0f} "
            f"| | < 200 MB, flat | {_ok(peak < TARGETS['rss_mb'] and rss['backlog_sitting'] - rss['before'] < 20)} |"
        )
    replay = results.get("replay")
    if replay:
        lines.append(
            f"| replay of {replay['size']:,} parked (msg/s, whole command) | | {replay['msg_per_s']:,.0f} "
            f"({replay['replay_s']:.1f} s) | | >= 4,000/s | {_ok(replay['msg_per_s'] >= TARGETS['replay_per_s'])} |"
        )
    validation = results.get("validation")
    if validation:
        text = validation["text"].rstrip()
        lines += ["", "Validation (bench/bench_validation.py, documents/s):", "", "```", text, "```"]
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
