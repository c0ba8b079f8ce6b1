"""The CLI as partners and operators use it: validate folders in CI, check a config before deploying."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.helpers import ROOT, config_doc, to_toml

CONFIG = str(ROOT / "ops" / "gateway.toml")
EXAMPLES = ROOT / "schemas" / "examples"


def test_validate_a_folder_of_valid_messages_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    folders = [str(p) for p in sorted(EXAMPLES.glob("*/valid"))]
    assert main(["validate", "--config", CONFIG, *folders]) == 0
    out, err = capsys.readouterr()
    assert "15 valid, 0 invalid" in err
    assert out.count(": ok (") == 15


def test_validate_reports_each_invalid_file_with_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", CONFIG, str(EXAMPLES / "CUSDEC" / "invalid")]) == 1
    out, err = capsys.readouterr()
    files = sorted((EXAMPLES / "CUSDEC" / "invalid").glob("*.xml"))
    assert f"0 valid, {len(files)} invalid" in err
    for f in files:
        assert f"{f}: INVALID (422 " in out
    assert "line " in out
    assert "/Envelope/Body/Declaration" in out


def test_validate_json_lines_carry_the_problems(capsys: pytest.CaptureFixture[str]) -> None:
    bad = sorted((EXAMPLES / "CUSDEC" / "invalid").glob("*.xml"))[0]
    good = sorted((EXAMPLES / "CUSDEC" / "valid").glob("*.xml"))[0]
    assert main(["validate", "--json", "--config", CONFIG, str(bad), str(good)]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["status"] == 422
    assert rows[0]["errors"][0]["line"] > 0
    assert rows[1] == {
        "file": str(good),
        "status": 202,
        "message_id": rows[1]["message_id"],
        "message_type": "CUSDEC",
        "destination": "vnaccs",
    }


def test_validate_refuses_attacks_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>')
    assert main(["validate", "--config", CONFIG, str(bomb), str(tmp_path / "missing.xml")]) == 1
    out, _ = capsys.readouterr()
    assert "400 doctype_forbidden" in out
    assert "cannot read" in out


def test_check_config_ok_and_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", CONFIG]) == 0
    assert "7 message types" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        Path(CONFIG)
        .read_text()
        .replace("timeout_s = 10", 'timeout_s = "ten"')
        .replace('"../schemas/', f'"{ROOT}/schemas/')
    )
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "destinations[0].timeout_s" in err
    assert str(bad) in err


def test_python_dash_m_gateway_is_the_swgw_command() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=True)
    for command in ("serve", "check-config", "validate", "parked", "replay", "simulate", "status", "demo"):
        assert command in out.stdout


def test_validate_reports_no_route_as_the_gateway_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = sorted((EXAMPLES / "CUSDEC" / "valid").glob("*.xml"))[0]
    unrouted = tmp_path / "unrouted.xml"
    unrouted.write_bytes(good.read_bytes().replace(b"<To>VN-VNACCS</To>", b"<To>XX-NOBODY</To>"))
    assert main(["validate", "--json", "--config", CONFIG, str(unrouted)]) == 1
    row = json.loads(capsys.readouterr().out)
    assert (row["status"], row["reason"]) == (422, "no_route")  # same answer as POST /v1/messages


def test_check_config_refuses_a_message_type_that_can_accept_no_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    types_only = tmp_path / "types.xsd"
    types_only.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">'
        '<xs:complexType name="T"><xs:sequence/></xs:complexType></xs:schema>',
        encoding="utf-8",
    )
    config = tmp_path / "gateway.toml"
    config.write_text(to_toml(config_doc("p", message_types={"CUSDEC": types_only})), encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"configuration error: {config}: message_types[0].schema: types.xsd declares no global element" in err
