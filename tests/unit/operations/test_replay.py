"""Replay without a broker: filters, reasons read from x-death, the time limit's bounds, the
refusal's answer, and the CLI's documented exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.topology import Names
from gateway.cli import EXIT_REPLAY_REFUSED, EXIT_REPLAY_TIME_LIMIT, build_parser, main
from gateway.errors import BrokerUnavailable, ReplayInProgress
from gateway.messages import Parking, QueuedMessage
from gateway.observability.problems import from_ingress_error
from gateway.operations import replay
from gateway.settings.model import Settings
from tests.helpers import config_doc, free_port, write_settings


def msg(**kw: Any) -> QueuedMessage:
    base: dict[str, Any] = {
        "message_id": "M-1",
        "correlation_id": None,
        "message_type": "CUSDEC",
        "sender": "VN-NSW",
        "receiver": "VN-VNACCS",
        "destination": "vnaccs",
        "received_at": "2026-11-23T00:00:00.000Z",
        "body": b"<x/>",
    }
    return QueuedMessage(**{**base, **kw})


def parked_headers(m: QueuedMessage) -> dict[str, Any]:
    return dict(m.to_amqp().headers or {})


@pytest.fixture
def unreachable(tmp_path: Path) -> Settings:
    """Settings whose broker port refuses connections."""
    return write_settings(tmp_path, config_doc("swgwu", broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/"))


def test_reason_is_the_gateway_s_own_for_messages_it_parked() -> None:
    m = msg().parked(Parking("rejected", 400, "no", 1, "2026-11-23T00:00:00.000Z"))
    back = QueuedMessage.from_parts(m.body, parked_headers(m))
    assert replay.ParkedInfo.of(back, parked_headers(m)).reason == "rejected"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"x-death": [{"reason": "delivery_limit", "queue": "q", "count": 1}]}, "delivery_limit"),
        ({"x-death": [{"reason": b"delivery_limit", "queue": b"q"}]}, "delivery_limit"),
        ({"x-death": [{"reason": "expired"}, {"reason": "rejected"}]}, "expired"),  # the latest death first
        ({"x-first-death-reason": "delivery_limit"}, "delivery_limit"),
        ({"x-death": "garbled"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_reason_of_a_message_rabbitmq_dead_lettered_comes_from_x_death(headers: dict[str, Any], reason: str) -> None:
    h = {**parked_headers(msg()), **headers}
    info = replay.ParkedInfo.of(QueuedMessage.from_parts(b"<x/>", h), h)
    assert info.reason == reason
    assert info.message_id == "M-1"


def test_filters_match_on_type_sender_id_and_parking_time() -> None:
    at = msg().parked(Parking("rejected", 400, "", 1, "2026-11-23T10:00:00.000Z"))
    since = replay.parse_time("2026-11-23T16:00:00+07:00")  # 09:00Z
    until = replay.parse_time("2026-11-23T09:30:00Z")
    assert replay.ReplayFilter(message_type="CUSDEC", sender="VN-NSW", message_id="M-1", since=since).matches(at)
    assert not replay.ReplayFilter(until=until).matches(at)
    assert not replay.ReplayFilter(message_type="ECOO").matches(at)
    assert not replay.ReplayFilter(since=since).matches(msg())  # never parked: no time to compare
    assert since == datetime(2026, 11, 23, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="give a UTC offset"):
        replay.parse_time("2026-11-23T09:00:00")


def test_time_limit_is_bounded_below_rabbitmq_s_consumer_timeout() -> None:
    assert replay.check_timeout(replay.DEFAULT_TIMEOUT_S) == 600
    assert replay.check_timeout(replay.MAX_TIMEOUT_S) == 1500
    for bad in (0, -1, 1500.5, 1800):
        with pytest.raises(ValueError, match="timeout_s"):
            replay.check_timeout(bad)


def test_lock_name_is_per_destination_under_the_prefix() -> None:
    assert replay.lock_name(Names("swgw"), "vnaccs") == "swgw.replay-lock.vnaccs"


def test_refusal_is_a_409_problem_naming_the_destination() -> None:
    exc = ReplayInProgress("vnaccs", "swgw.replay-lock.vnaccs")
    resp = from_ingress_error(exc, "/admin/destinations/vnaccs/replay")
    assert (resp.status, resp.content_type) == (409, "application/problem+json")
    assert resp.text is not None
    body = json.loads(resp.text)
    assert body["type"] == "urn:swgw:problem:replay_in_progress"
    assert "'vnaccs' is already running" in body["detail"]
    assert "refused and changed nothing" in body["detail"]


async def test_unknown_destination_and_unreachable_broker_fail_clearly(unreachable: Settings) -> None:
    with pytest.raises(KeyError, match="unknown destination 'nope'"):
        await replay.replay(unreachable, "nope")
    with pytest.raises(BrokerUnavailable, match="not reachable"):
        await replay.replay(unreachable, "vnaccs")
    with pytest.raises(BrokerUnavailable, match="not reachable"):
        await replay.browse(unreachable, "vnaccs")
    with pytest.raises(ValueError, match="timeout_s"):
        await replay.replay(unreachable, "vnaccs", timeout_s=3600)


def test_cli_documents_its_replay_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert (EXIT_REPLAY_REFUSED, EXIT_REPLAY_TIME_LIMIT) == (3, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "3 refused, another replay of this destination is running" in out
    assert "4 stopped at --timeout-s" in out
    assert "--timeout-s" in out


def test_cli_refuses_a_time_limit_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--destination", "vnaccs", "--timeout-s", "3600"])
    assert exited.value.code == 2
    assert "at most 1500 seconds" in capsys.readouterr().err


def test_cli_replay_with_the_broker_down_exits_1_and_says_why(
    unreachable: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.runtime.serve.use_uvloop", lambda: None)  # keep this process's loop policy
    assert main(["replay", "--config", str(unreachable.path), "--destination", "vnaccs"]) == 1
    assert "not reachable" in capsys.readouterr().err
