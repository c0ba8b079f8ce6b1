"""`swgw status`: the screen an operator reads during an outage, and how it reads the admin API."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import cli
from gateway.settings.load import load_settings
from gateway.tools import status
from gateway.tools.status import Row, StatusError
from tests.helpers import config_doc, free_port, sha, to_toml

NOW = datetime(2026, 11, 23, 8, 15, 2, tzinfo=UTC)
ADMIN = "admin-token-for-status"


def _ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def test_render_shows_state_backlog_parked_rate_and_last_success_per_destination() -> None:
    rows = [
        Row("vnaccs", "open", backlog=1000, parked=0, last_delivery_at=_ago(hours=2, minutes=4),
            circuit_changed_at=_ago(hours=2, minutes=3), rate_per_s=0.0),
        Row("ecoo", "closed", backlog=0, parked=2, last_delivery_at=_ago(seconds=3),
            circuit_changed_at=_ago(days=3, hours=4), rate_per_s=12.5),
        Row("acdd", "paused", backlog=20, parked=0, last_delivery_at=None, circuit_changed_at=None),
    ]  # fmt: skip
    screen = status.render(rows, NOW, source="http://127.0.0.1:8080")
    assert screen == (
        "swgw status at 2026-11-23 08:15:02Z from http://127.0.0.1:8080\n"
        "\n"
        "DESTINATION  STATE   SINCE  BACKLOG  PARKED  DELIVERED/S  LAST SUCCESS\n"
        "acdd         PAUSED  -           20       0            -  never\n"
        "ecoo         closed  3d04h        0       2         12.5  3s ago\n"
        "vnaccs       OPEN    2h03m    1,000       0          0.0  2h04m ago\n"
        "\n"
        "! acdd: paused by an operator; 20 message(s) held safely in RabbitMQ; "
        "resume: POST /admin/destinations/acdd/resume\n"
        "! ecoo: 2 parked; inspect: swgw parked list --destination ecoo; "
        "after the fix: swgw replay --destination ecoo --dry-run\n"
        "! vnaccs: backend down (circuit open for 2h03m); 1,000 message(s) held safely in RabbitMQ; "
        "resumes by itself once a probe succeeds\n"
        "\n"
        "backlog and parked: whole system (broker); state, rate, last success: this replica\n"
    )


def test_render_shows_a_drain_with_its_rate_and_time_left() -> None:
    rows = [
        Row("vnaccs", "closed", backlog=12_000, parked=0, rate_per_s=250.0),
        Row("ecoo", "closed", backlog=40, parked=0, rate_per_s=0.0),  # nothing moving: no guess
    ]
    notes = status.render(rows, NOW).split("\n\n")[2]
    assert notes == "  vnaccs: draining 12,000 at 250.0/s, about 48s left"


def test_render_says_so_when_all_is_well_and_copes_with_unknowns() -> None:
    rows = [
        Row("vnaccs", "closed", backlog=0, parked=0, last_delivery_at=_ago(minutes=1, seconds=5)),
        Row("gate", "unknown (no delivery here)", backlog=None, parked=None),
        Row("late", "half_open", backlog=3, parked=0, last_delivery_at=NOW + timedelta(seconds=2)),  # clock skew
    ]
    screen = status.render(rows, NOW)
    assert "vnaccs       closed" in screen
    assert "1m05s ago" in screen
    assert "unknown (no delivery here)" in screen
    assert "0s ago" in screen  # a timestamp slightly ahead of us is "just now", not negative
    assert "! late: backend probe succeeded, trying one message before resuming" in screen
    assert "all destinations" not in screen
    assert "all destinations closed (delivering), nothing parked" in status.render(rows[:1], NOW)
    assert "(no destinations configured)" in status.render([], NOW)


def test_with_rates_measures_deliveries_between_two_samples() -> None:
    before = [Row("a", "closed", delivered_total=100), Row("b", "closed", delivered_total=50), Row("c", "open")]
    after = [
        Row("a", "closed", delivered_total=125),
        Row("b", "closed", delivered_total=3),  # counter went back: restarted or another replica answered
        Row("c", "open"),
        Row("d", "closed", delivered_total=7),  # new destination
    ]
    rates = {r.id: r.rate_per_s for r in status.with_rates(before, after, elapsed_s=2.5)}
    assert rates == {"a": 10.0, "b": None, "c": None, "d": None}
    assert status.with_rates(before, after, elapsed_s=0)[0].rate_per_s is None


def test_rows_follow_the_admin_api_contract() -> None:
    row = Row.from_api(
        {
            "id": "vnaccs",
            "state": "half_open",
            "circuit": "half_open",
            "paused": False,
            "backlog": 12,
            "parked": 1,
            "inflight": 1,
            "delivered_total": 40,
            "last_delivery_at": "2026-11-23T08:00:00.123Z",
            "circuit_changed_at": "2026-11-23T07:00:00+07:00",
            "rate_limit_per_s": 2.5,
        }
    )
    assert row == Row(
        "vnaccs",
        "half_open",
        backlog=12,
        parked=1,
        inflight=1,
        delivered_total=40,
        last_delivery_at=datetime(2026, 11, 23, 8, 0, 0, 123000, tzinfo=UTC),
        circuit_changed_at=datetime(2026, 11, 23, 0, 0, tzinfo=UTC),
    )
    sparse = Row.from_api({"id": "gate", "state": "unknown (no delivery here)", "backlog": None, "parked": True})
    assert (sparse.backlog, sparse.parked, sparse.last_delivery_at) == (None, None, None)


# -- against an admin API on loopback --------------------------------------------------------------


class FakeAdmin:
    """The documented `GET /admin/destinations` contract; each request delivers 10 more."""

    def __init__(self) -> None:
        self.delivered = 0
        self.seen_auth: list[str | None] = []
        self.status = 200

    async def handler(self, request: web.Request) -> web.Response:
        self.seen_auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {ADMIN}":
            return web.json_response({"title": "unauthenticated"}, status=401)
        if self.status != 200:
            return web.Response(status=self.status, text="admin broke")
        self.delivered += 10
        body: dict[str, Any] = {
            "destinations": [
                {"id": "vnaccs", "state": "closed", "backlog": 5, "parked": 0, "delivered_total": self.delivered,
                 "last_delivery_at": "2026-11-23T08:00:00.000Z", "circuit_changed_at": None},
            ]
        }  # fmt: skip
        return web.json_response(body)


@pytest.fixture
async def admin() -> AsyncIterator[tuple[FakeAdmin, str]]:
    fake = FakeAdmin()
    app = web.Application()
    app.router.add_get("/admin/destinations", fake.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_fetch_sends_the_admin_token_and_parses_rows(admin: tuple[FakeAdmin, str]) -> None:
    fake, url = admin
    rows = await status.fetch(url + "/", ADMIN)
    assert fake.seen_auth == [f"Bearer {ADMIN}"]
    assert [(r.id, r.state, r.backlog, r.delivered_total) for r in rows] == [("vnaccs", "closed", 5, 10)]


async def test_fetch_explains_a_rejected_token_and_a_broken_api(admin: tuple[FakeAdmin, str]) -> None:
    fake, url = admin
    with pytest.raises(StatusError, match="admin token was rejected"):
        await status.fetch(url, "wrong")
    fake.status = 500
    with pytest.raises(StatusError, match="HTTP 500: admin broke"):
        await status.fetch(url, ADMIN)
    with pytest.raises(StatusError, match=r"not found \(404\)"):
        await status.fetch(url + "/elsewhere", ADMIN)


async def test_fetch_explains_a_gateway_that_is_not_there() -> None:
    with pytest.raises(StatusError, match=r"cannot reach .*is `swgw serve` running"):
        await status.fetch(f"http://127.0.0.1:{free_port()}", ADMIN)


async def test_run_prints_a_screen_with_the_measured_delivery_rate(admin: tuple[FakeAdmin, str]) -> None:
    fake, url = admin
    out = io.StringIO()
    await status.run(url, ADMIN, interval_s=0.05, watch=False, out=out)
    screen = out.getvalue()
    assert len(fake.seen_auth) == 2  # two samples, one screen
    assert "\033[" not in screen  # no terminal control codes unless watching
    line = next(x for x in screen.splitlines() if x.startswith("vnaccs"))
    rate = float(line.split()[5])
    assert rate > 0  # 10 deliveries between the samples
    assert rate <= 10 / 0.05


async def test_watch_refreshes_with_one_new_sample_per_screen(admin: tuple[FakeAdmin, str]) -> None:
    fake, url = admin
    out = io.StringIO()
    await status.run(url, ADMIN, interval_s=0.01, watch=True, out=out, max_screens=3)
    assert out.getvalue().count("\033[H\033[2J") == 3
    assert len(fake.seen_auth) == 4


def _args(**kw: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_main_needs_the_token_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SWGW_STATUS_TEST_TOKEN", raising=False)
    assert status.main(_args(admin_token_env="SWGW_STATUS_TEST_TOKEN")) == 2
    assert "set SWGW_STATUS_TEST_TOKEN to the admin token" in capsys.readouterr().err


def test_main_reports_an_unreachable_gateway_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWGW_ADMIN_TOKEN", ADMIN)
    assert status.main(_args(url=f"http://127.0.0.1:{free_port()}", interval=0)) == 1
    err = capsys.readouterr().err
    assert err.startswith("status: cannot reach http://127.0.0.1:")
    assert ADMIN not in err


# -- where to ask: the config, like every subcommand -------------------------------------------------


def _config(tmp_path: Path, admin: dict[str, Any] | None = None, server: dict[str, Any] | None = None) -> Path:
    doc = config_doc("status-test", server={"port": 8181, **(server or {})})
    doc["admin"] = {"token_sha256": sha(ADMIN), **(admin or {})}
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


def test_admin_url_is_the_admin_listener_or_the_shared_port_seen_from_here(tmp_path: Path) -> None:
    shared = load_settings(_config(tmp_path), env={})
    assert status.admin_url(shared) == "http://127.0.0.1:8181"
    own = load_settings(_config(tmp_path, admin={"host": "10.1.2.3", "port": 9191}), env={})
    assert status.admin_url(own) == "http://10.1.2.3:9191"
    wildcard = load_settings(_config(tmp_path, admin={"port": 9191}, server={"host": "0.0.0.0"}), env={})
    assert status.admin_url(wildcard) == "http://127.0.0.1:9191"
    v6 = replace(own, admin=replace(own.admin, host="::1"))
    assert status.admin_url(v6) == "http://[::1]:9191"
    tls = replace(own, server=replace(own.server, tls_cert=tmp_path / "cert.pem"))
    assert status.admin_url(tls) == "https://10.1.2.3:9191"


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """status.run replaced by a recorder: which URL with which token."""
    seen: list[tuple[str, str]] = []

    async def fake_run(url: str, token: str, **_: Any) -> None:
        seen.append((url, token))

    monkeypatch.setattr(status, "run", fake_run)
    return seen


def test_status_takes_config_like_every_subcommand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], asked: list[tuple[str, str]]
) -> None:
    path = _config(tmp_path, admin={"port": 9191})
    monkeypatch.setenv("SWGW_ADMIN_TOKEN", ADMIN)
    assert cli.main(["status", "--config", str(path), "--interval", "0"]) == 0
    monkeypatch.setenv("SWGW_CONFIG", str(path))  # and $SWGW_CONFIG, then ./gateway.toml
    assert cli.main(["status", "--interval", "0"]) == 0
    monkeypatch.delenv("SWGW_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["status", "--interval", "0"]) == 0
    assert asked == [("http://127.0.0.1:9191", ADMIN)] * 3

    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN + "\n", encoding="utf-8")
    monkeypatch.delenv("SWGW_ADMIN_TOKEN")
    assert cli.main(["status", "--admin-token-file", str(token_file), "--interval", "0"]) == 0
    assert asked[-1] == ("http://127.0.0.1:9191", ADMIN)

    # --url still overrides, and then no config is needed
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setenv("SWGW_ADMIN_TOKEN", ADMIN)
    assert cli.main(["status", "--config", "/nonexistent.toml", "--url", "http://gw:1", "--interval", "0"]) == 0
    assert asked[-1] == ("http://gw:1", ADMIN)
    capsys.readouterr()


def test_status_refuses_a_token_the_config_does_not_accept_and_a_missing_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], asked: list[tuple[str, str]]
) -> None:
    path = _config(tmp_path)
    monkeypatch.setenv("SWGW_ADMIN_TOKEN", "a-partner-token-by-mistake")
    assert cli.main(["status", "--config", str(path), "--interval", "0"]) == 1
    err = capsys.readouterr().err
    assert "[admin] token_sha256 does not accept this token" in err
    assert "a-partner-token-by-mistake" not in err
    assert cli.main(["status", "--config", str(tmp_path / "missing.toml"), "--interval", "0"]) == 1
    assert "or give the admin API's address with --url" in capsys.readouterr().err
    assert asked == []


def test_a_replica_that_names_itself_says_whether_it_is_the_active_one() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    rows = [
        Row.from_api({"id": "vnaccs", "state": "closed", "replica": "gw-2", "active": True}),
        Row.from_api({"id": "ecoo", "state": "closed", "replica": "gw-2", "active": False}),
    ]
    screen = status.render(rows, now, source="http://gw-2:9090")
    assert "from http://gw-2:9090 (replica gw-2)" in screen
    lines = screen.splitlines()
    assert lines[2].endswith("ACTIVE HERE")
    assert lines[3].startswith("ecoo")
    assert lines[3].endswith("no")
    assert lines[4].startswith("vnaccs")
    assert lines[4].endswith("yes")
    assert "no: standby, or idle queue" in screen
