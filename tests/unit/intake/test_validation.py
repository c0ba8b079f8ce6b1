"""Hardened parsing and readable problems, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError, InvalidMessage, MalformedXML
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


# -- payload roots: inferred through xs:include / xs:redefine, and none is refused at start-up ---------

XS = 'xmlns:xs="http://www.w3.org/2001/XMLSchema"'
ORDER = '<xs:element name="Order"><xs:complexType><xs:sequence><xs:element name="Id" type="xs:string"/></xs:sequence></xs:complexType></xs:element>'  # noqa: E501


def _xsd(path: Path, body: str, tns: str | None = "urn:t") -> Path:
    ns = f' targetNamespace="{tns}" xmlns="{tns}" elementFormDefault="qualified"' if tns else ""
    path.write_text(f"<xs:schema {XS}{ns}>\n{body}\n</xs:schema>\n", encoding="utf-8")
    return path


def test_roots_declared_in_an_included_file_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    _xsd(tmp_path / "parts" / "invoice.xsd", '<xs:element name="Invoice" type="xs:string"/>', tns=None)  # chameleon
    _xsd(tmp_path / "parts" / "order.xsd", '<xs:include schemaLocation="invoice.xsd"/>\n' + ORDER)
    main = _xsd(tmp_path / "main.xsd", '<xs:include schemaLocation="parts/order.xsd"/>')
    validator = Validator([MessageType("ORDER", main)])
    assert validator.types["ORDER"].roots == {"{urn:t}Order", "{urn:t}Invoice"}
    body = envelope('<Order xmlns="urn:t"><Id>1</Id></Order>', message_type="ORDER")
    validator.check(body)  # was: "expected one of: ." for every message
    with pytest.raises(InvalidMessage, match=r"expected one of: Invoice \(urn:t\), Order \(urn:t\)"):
        validator.check(envelope('<Other xmlns="urn:t"/>', message_type="ORDER"))


def test_roots_through_xs_redefine_and_a_file_uri(tmp_path: Path) -> None:
    base = _xsd(
        tmp_path / "base.xsd", ORDER + '\n<xs:simpleType name="Code"><xs:restriction base="xs:string"/></xs:simpleType>'
    )
    main = _xsd(
        tmp_path / "main.xsd",
        f'<xs:redefine schemaLocation="{base.as_uri()}"><xs:simpleType name="Code">'
        '<xs:restriction base="Code"><xs:maxLength value="3"/></xs:restriction></xs:simpleType></xs:redefine>',
    )
    assert Validator([MessageType("ORDER", main)]).types["ORDER"].roots == {"{urn:t}Order"}


def test_a_type_that_can_accept_no_root_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    order = _xsd(tmp_path / "order.xsd", ORDER)
    types_only = _xsd(tmp_path / "types.xsd", '<xs:complexType name="T"><xs:sequence/></xs:complexType>')
    with pytest.raises(ConfigError) as exc:
        Validator([MessageType("ORDER", order), MessageType("T", types_only)], config_file="gw.toml")
    assert (exc.value.file, exc.value.key) == ("gw.toml", "message_types[1].schema")
    assert "declares no global element" in str(exc.value)

    with pytest.raises(ConfigError) as exc:
        Validator([MessageType("ORDER", order, root="Ordre")], config_file="gw.toml")
    assert exc.value.key == "message_types[0].root"
    assert "root 'Ordre' is not a global element of order.xsd" in str(exc.value)
    assert "declared: Order" in str(exc.value)
