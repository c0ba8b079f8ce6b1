"""bench/: the target table says MET or MISSED by the ratios of issue 17, and runs alternate."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.phases import alternate


def _s(median: float) -> dict[str, Any]:
    return {"median": median, "min": median, "max": median, "runs": [median]}


def _moved(per_s: float) -> dict[str, Any]:
    return {"msg_per_s": _s(per_s), "seconds": _s(100 / per_s), "proc_ms_per_msg": 0.5, "rabbit_ms_per_msg": 0.2}


def results(*, gateway: float, ceiling: float, p99: float, drain: float, replay: float) -> dict[str, Any]:
    lat = {k: _s(1.0) for k in ("p50_ms", "max_ms", "lag_p99_ms")} | {"accepted": 10, "requests": 10}
    return {
        "intake": {
            "saturation": {"ceiling": _s(ceiling), "gateway": _s(gateway), "gateway_pg": _s(gateway * 0.9)},
            "half_rate": ceiling / 2,
            "latency": {"ceiling": lat | {"p99_ms": _s(10.0)}, "gateway": lat | {"p99_ms": _s(p99)}},
            "connections": 64,
            "load_generator": "wrk",
        },
        "drain": {"size": 100, "naive": _moved(1000.0), "gateway": _moved(drain)},
        "replay": {"size": 100, "naive": _moved(1000.0), "gateway": _moved(replay)},
    }


def test_each_target_is_met_at_its_ratio_and_missed_below_it() -> None:
    met = {
        row[0]: row[4] for row in report.targets(results(gateway=1000, ceiling=1000, p99=15, drain=1000, replay=1000))
    }
    assert all(met.values()), met
    missed = report.targets(results(gateway=999, ceiling=1000, p99=15.1, drain=999, replay=999))
    assert [row[4] for row in missed] == [False, False, False, False, False]  # PostgreSQL 899/s: 0.899x < 0.9x


def test_the_report_prints_the_target_table_first() -> None:
    md = report.markdown(results(gateway=500, ceiling=1000, p99=30, drain=500, replay=500))
    table = md.split("## Targets", 1)[1]
    assert (
        "| intake saturation, all features, SQLite stores | 500/s vs ceiling 1,000/s | 0.50x | >= 1.0x | **MISSED** |"
        in table
    )


def test_runs_alternate_so_drift_hits_both_alike() -> None:
    assert alternate(3, ("a", "b")) == ["a", "b", "b", "a", "a", "b"]
