"""The message set end to end through the real Validator: schemas, examples and rules agree.

Every valid example must pass exactly the checks ingress runs (envelope XSD, payload XSD,
business rules); every invalid example must be refused with the status, line and reason
its `swgw-expect` comment states. The Validator is built from
`schemas/examples/message-set.toml`, so a type missing from that config, a moved schema or a
root element renamed in an XSD fails here. Validation runs on the real clock because that
is what the demo does: every example must stay valid as time passes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import xmlschema
from lxml import etree

from gateway.errors import IngressError
from gateway.intake import rules
from gateway.intake.validation import Validator
from gateway.settings.load import load_settings
from gateway.settings.model import Settings

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"
CONFIG = EXAMPLES / "message-set.toml"

TYPES = {
    "CUSDEC": ("customs/declaration.xsd", "urn:swgw:customs:declaration:1", "Declaration"),
    "CUSRES": ("customs/response.xsd", "urn:swgw:customs:response:1", "DeclarationResponse"),
    "HANDOVER": ("cargo/handover.xsd", "urn:swgw:cargo:handover:1", "CargoHandover"),
    "GATEEVT": ("cargo/gate-event.xsd", "urn:swgw:cargo:gate-event:1", "GateEvent"),
    "ECOO": ("asean/certificate-of-origin.xsd", "urn:swgw:asean:eco:1", "CertificateOfOrigin"),
    "ACDD": ("asean/acdd.xsd", "urn:swgw:asean:acdd:1", "ACDD"),
    "ACK": ("common/acknowledgement.xsd", "urn:swgw:common:ack:1", "Acknowledgement"),
}
"""The fixed contract: type name → schema, target namespace, payload root."""

_EXPECT_RE = re.compile(rb"\A<\?xml[^>]*\?>\s*<!--\s*swgw-expect:(?P<spec>.*?)-->", re.S)
ALL_XSDS = sorted(p for p in SCHEMAS.rglob("*.xsd"))
MESSAGE_SET_XSDS = [p for p in ALL_XSDS if p.parent.name != "envelope"]  # the envelope belongs to the spine
VALID = sorted(EXAMPLES.glob("*/valid/*.xml"))
INVALID = sorted(EXAMPLES.glob("*/invalid/*.xml"))


def _id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.name}"


@dataclass(frozen=True)
class Expectation:
    status: int
    line: int | None
    reason: str | None


def expectation(body: bytes) -> Expectation:
    """Read the `<!-- swgw-expect: status=422 line=N reason="..." -->` right after the declaration."""
    m = _EXPECT_RE.match(body)
    assert m, "an invalid example must start with <?xml ...?> followed by a swgw-expect comment"
    pairs = dict(item.split("=", 1) for item in shlex.split(m["spec"].decode()))
    assert set(pairs) <= {"status", "line", "reason"}, f"unknown keys in swgw-expect: {sorted(pairs)}"
    return Expectation(
        status=int(pairs["status"]),
        line=int(pairs["line"]) if "line" in pairs else None,
        reason=pairs.get("reason"),
    )


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(CONFIG)


@pytest.fixture(scope="module")
def validator(settings: Settings) -> Validator:
    return Validator.from_settings(settings, rules=rules.check)


def test_config_declares_exactly_the_contracted_types(settings: Settings) -> None:
    declared = {t.name: (t.schema, t.root) for t in settings.message_types}
    assert declared == {name: ((SCHEMAS / xsd).resolve(), root) for name, (xsd, _, root) in TYPES.items()}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_schema_declares_contracted_namespace_and_root(name: str) -> None:
    xsd, namespace, root = TYPES[name]
    doc = etree.parse(str(SCHEMAS / xsd))
    assert doc.getroot().get("targetNamespace") == namespace
    assert doc.getroot().get("elementFormDefault") == "qualified"
    tops = [e.get("name") for e in doc.getroot().iterchildren("{http://www.w3.org/2001/XMLSchema}element")]
    assert tops == [root], "exactly one global element, the payload root"


@pytest.mark.parametrize("name", sorted(TYPES))
def test_every_type_has_enough_examples(name: str) -> None:
    assert len(list((EXAMPLES / name / "valid").glob("*.xml"))) >= 2
    assert len(list((EXAMPLES / name / "invalid").glob("*.xml"))) >= 3


@pytest.mark.parametrize("xsd", ALL_XSDS, ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_schema_compiles_with_lxml_and_xmlschema(xsd: Path) -> None:
    etree.XMLSchema(etree.parse(str(xsd), etree.XMLParser(no_network=True)))
    xmlschema.XMLSchema10(str(xsd))


@pytest.mark.parametrize("xsd", MESSAGE_SET_XSDS, ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_every_type_and_element_is_documented(xsd: Path) -> None:
    """The generated reference is only as good as the annotations: none may be missing."""
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    doc = etree.parse(str(xsd))
    undocumented = [
        f"line {node.sourceline}: {etree.QName(node).localname} {node.get('name')}"
        for node in doc.xpath("//xs:element[@name] | //xs:complexType[@name] | //xs:simpleType[@name]", namespaces=ns)
        if not node.xpath("string(xs:annotation/xs:documentation)", namespaces=ns).strip()
    ]
    assert not undocumented


@pytest.mark.parametrize("path", VALID, ids=_id)
def test_valid_example_passes(validator: Validator, path: Path) -> None:
    env = validator.check(path.read_bytes())
    assert env.message_type == path.parent.parent.name
    assert etree.QName(env.payload).namespace == TYPES[env.message_type][1]


@pytest.mark.parametrize("path", VALID, ids=_id)
def test_valid_example_also_passes_xmlschema(path: Path) -> None:
    """Both validators must agree on valid documents, or the comparison in bench/ means nothing."""
    payload = etree.parse(str(path)).getroot()[1][0]
    xmlschema.XMLSchema10(str(SCHEMAS / TYPES[path.parent.parent.name][0])).validate(payload)


@pytest.mark.parametrize("path", INVALID, ids=_id)
def test_invalid_example_fails_as_stated(validator: Validator, path: Path) -> None:
    body = path.read_bytes()
    expected = expectation(body)
    with pytest.raises(IngressError) as caught:
        validator.check(body)
    err = caught.value
    assert err.status == expected.status, err.detail
    assert err.problems, "a refusal must say where and why"
    first = err.problems[0]
    if expected.line is not None:
        assert first.line == expected.line, str(first)
    if expected.reason is not None:
        assert expected.reason in first.reason, str(first)
    assert first.path.startswith("/Envelope/Body/"), "payload problems point into the body"


@pytest.mark.parametrize("path", INVALID, ids=_id)
def test_invalid_example_is_otherwise_the_valid_document(validator: Validator, path: Path) -> None:
    """Each invalid example breaks one thing: exactly one problem, so its stated error is the point."""
    with pytest.raises(IngressError) as caught:
        validator.check(path.read_bytes())
    assert len(caught.value.problems) == 1, [str(p) for p in caught.value.problems]


def test_expectation_parser_reads_all_keys() -> None:
    body = b'<?xml version="1.0"?>\n<!-- swgw-expect: status=422 line=7 reason="is \'x\' wrong" -->\n<a/>'
    assert expectation(body) == Expectation(422, 7, "is 'x' wrong")
