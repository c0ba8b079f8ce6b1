"""Hardened parsing and readable problems, without a broker."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidMessage, MalformedXML
from gateway.intake import rules
from gateway.intake.validation import Validator, parse_xml
from gateway.settings.model import MessageType
from tests.helpers import SCHEMAS, envelope

CUSDEC = MessageType("CUSDEC", SCHEMAS / "customs" / "declaration.xsd")
VALID = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator([CUSDEC], rules=rules.check)


def test_valid_examples_pass_and_header_is_read(validator: Validator) -> None:
    env = validator.check(VALID[0].read_bytes())
    assert (env.sender, env.receiver, env.message_type) == ("VN-NSW", "VN-VNACCS", "CUSDEC")
    assert env.payload.tag == "{urn:swgw:customs:declaration:1}Declaration"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"<a>",
        b"<a></b>",
        b"\x00\x01",
        b'<?xml version="1.0" encoding="bogus-enc"?><a/>',
        b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
        b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><a/>',
        "<a>ü</a>".encode("utf-16")[:-1],
    ],
)
def test_malformed_or_dtd_bodies_are_400(body: bytes) -> None:
    with pytest.raises(MalformedXML):
        parse_xml(body)


def test_deep_nesting_is_bounded() -> None:
    deep = b"<a>" * 100_000 + b"</a>" * 100_000
    with pytest.raises(MalformedXML):
        parse_xml(deep)


def test_syntax_error_has_line_and_column() -> None:
    with pytest.raises(MalformedXML) as exc:
        parse_xml(b"<a>\n  <b>\n</a>")
    p = exc.value.problems[0]
    assert (p.line, p.column) == (3, 5)
    assert "line 3" in exc.value.detail


def test_schema_problem_has_readable_path_line_column_and_no_clark_noise(validator: Validator) -> None:
    text = VALID[0].read_text()
    lines = text.split("\n")
    i = next(n for n, ln in enumerate(lines) if "<HSCode>" in ln)
    lines[i] = lines[i].replace("<HSCode>", "<HSCode>X", 1)
    with pytest.raises(InvalidMessage) as exc:
        validator.check("\n".join(lines).encode())
    p = exc.value.problems[0]
    assert p.line == i + 1
    assert p.column == lines[i].index("<") + 1
    assert p.path.startswith("/Envelope/Body/Declaration/GoodsItem")
    assert p.path.endswith("/HSCode")
    assert "{urn:" not in p.reason
    assert exc.value.reason == "schema_invalid"


def test_problems_are_capped(validator: Validator) -> None:
    items = "".join(f"<Junk{i} xmlns='urn:swgw:customs:declaration:1'/>" for i in range(200))
    with pytest.raises(InvalidMessage) as exc:
        validator.check(envelope(f"<Declaration xmlns='urn:swgw:customs:declaration:1'>{items}</Declaration>"))
    assert 1 <= len(exc.value.problems) <= 50


def test_envelope_without_payload_and_with_wrong_root(validator: Validator) -> None:
    with pytest.raises(InvalidMessage) as exc:
        validator.check(envelope(""))
    assert exc.value.reason == "envelope_invalid"
    assert exc.value.problems[0].path == "/Envelope/Body"
    with pytest.raises(InvalidMessage) as exc:
        validator.check(envelope("<X xmlns='urn:other'/>"))
    assert exc.value.reason == "wrong_payload"


def test_rule_layer_runs_after_the_schema(validator: Validator) -> None:
    text = VALID[0].read_text()
    # same structure, but the declared item count no longer matches the items listed
    import re

    changed = re.sub(
        r"<GoodsItemQuantity>(\d+)</GoodsItemQuantity>",
        lambda m: f"<GoodsItemQuantity>{int(m.group(1)) + 1}</GoodsItemQuantity>",
        text,
        count=1,
    )
    with pytest.raises(InvalidMessage) as exc:
        validator.check(changed.encode())
    assert exc.value.reason == "rule_violation"
    problem = exc.value.problems[0]
    assert "GoodsItemQuantity" in problem.path
    assert problem.line is not None
    line_text = changed.split("\n")[problem.line - 1]
    assert problem.column == line_text.index("<GoodsItemQuantity>") + 1  # rule problems get a column too
