"""promtool on the ops files and on a live /metrics scrape.

promtool (Debian package `prometheus`, installed by ops/setup-env.sh) is the reference
parser: it checks the scrape config, the rule syntax, runs the alert unit tests in
ops/alerts/swgw.rules.test.yml, and lints the exposition of a running gateway (naming
conventions, types, help text). Missing promtool skips locally and fails in CI, where the
checks are the point.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SCHEMAS, config_doc, envelope, run_gateway, with_message_id, write_settings

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "ops" / "alerts"
VALID = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: ops/setup-env.sh installs Debian's `prometheus` package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60, check=False
    )


def test_scrape_config_is_valid(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(ROOT / "ops" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout  # the rules are wired in, not just present


def test_alert_rules_are_valid(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(ALERTS / "swgw.rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(ALERTS / "swgw.rules.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_metrics_rejects_a_bad_exposition(promtool: str) -> None:
    """Proves the live check below can fail: a counter without `_total` is a lint error."""
    bad = b"# HELP swgw_things Things.\n# TYPE swgw_things counter\nswgw_things 1\n"
    result = _run(promtool, "check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr


@pytest.mark.integration
async def test_live_metrics_scrape_passes_promtool_check_metrics(
    promtool: str, tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = write_settings(tmp_path, config_doc(prefix))
    cleanup.append(settings)
    async with run_gateway(settings) as gw:
        # Samples in the labelled counters and histograms, so their lines are linted too.
        for i in range(2):
            status, receipt, _ = await gw.post(with_message_id(VALID[0].read_bytes(), f"PROMTOOL-{prefix}-{i}"))
            assert status == 202, receipt
        status, _, _ = await gw.post(envelope("<NotADeclaration/>", message_id=f"BAD-{prefix}"))
        assert status >= 400
        async with gw.session.get(f"{gw.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            exposition = await resp.read()

    text = exposition.decode()
    assert 'swgw_ingest_messages_total{message_type="CUSDEC",outcome="accepted",partner="VN-NSW"} 2.0' in text
    assert "swgw_ingest_duration_seconds_count 2.0" in text
    assert "swgw_broker_connected 1.0" in text
    assert "process_start_time_seconds" in text

    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(exposition), timeout=60)
    assert proc.returncode == 0, (out + err).decode()
    assert not (out + err).strip(), (out + err).decode()  # no lint warnings either
