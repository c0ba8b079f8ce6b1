"""Material nobody on the team wrote: OASIS UBL 2.1, HMRC's WCO-DM customs declarations, XML attacks.

Adding a message type is config plus an XSD: every UBL document type below is configured
exactly like our own types, with its multi-file xs:import chain, and every official example
goes through the gateway over HTTP. Every attack file is refused with 400, and the ones that
try to reach a file or the network provably read nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from lxml import etree

from gateway.broker.topology import Names
from gateway.intake.validation import Validator
from tests.helpers import (
    SHARED,
    RunningGateway,
    config_doc,
    envelope,
    free_port,
    get_all,
    run_gateway,
    write_settings,
)

pytestmark = pytest.mark.integration
UBL = SHARED / "ubl-2.1"
WCO = SHARED / "wco-dms-hmrc-cds"
ATTACKS = SHARED / "attacks"
CUSDEC_EXAMPLE = sorted((Path(__file__).resolve().parents[2] / "schemas/examples/CUSDEC/valid").glob("*.xml"))[0]
WCO_NOT_WELL_FORMED = {"TT_EX002a.xml", "TT_EX022a_Declaration1_(Step1).xml", "TT_IM084a.xml"}


def ubl_pairs() -> list[tuple[Path, Path]]:
    """(schema, example) as the official val/testsamples.sh pairs them."""
    text = (UBL / "val" / "testsamples.sh").read_text()
    pairs = re.findall(r"validate\.sh \.\./(xsdrt/maindoc/\S+\.xsd) \.\./(xml/\S+\.xml)", text)
    return [(UBL / s, UBL / x) for s, x in pairs]


def ubl_types() -> dict[str, Path]:
    return {f"UBL-{s.stem.removeprefix('UBL-').removesuffix('-2.1')}": s for s, _ in ubl_pairs()}


def strip_prolog(doc: bytes) -> str:
    """The example's root element as text, to put inside an envelope Body (prolog dropped)."""
    root = etree.fromstring(doc, etree.XMLParser(resolve_entities=False, no_network=True))
    return etree.tostring(root, encoding="unicode")


@pytest.fixture
async def ubl_gw(tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]) -> AsyncIterator[RunningGateway]:
    types = ubl_types()
    doc = config_doc(
        prefix, message_types=types, routes=[{"to": "VN-VNACCS", "message_type": "*", "destination": "vnaccs"}]
    )
    doc["server"]["max_body_bytes"] = 2_000_000
    settings = write_settings(tmp_path, doc)
    cleanup.append(settings)
    async with run_gateway(settings, role="ingress") as gw:
        yield gw


async def test_every_official_ubl_example_is_accepted_through_http(ubl_gw: RunningGateway) -> None:
    pairs = ubl_pairs()
    assert len(pairs) >= 50  # the official mapping covers the 57 examples
    types = {v: k for k, v in ubl_types().items()}
    for i, (schema, example) in enumerate(pairs):
        body = envelope(strip_prolog(example.read_bytes()), message_id=f"UBL-{i}", message_type=types[schema])
        status, answer, _ = await ubl_gw.post(body)
        assert status == 202, (example.name, answer)
    queued = await get_all(Names(ubl_gw.settings.broker.prefix).queue("vnaccs"))
    assert len(queued) == len(pairs)


async def test_official_ubl_bad_order_gets_422_at_the_misspelt_element(ubl_gw: RunningGateway) -> None:
    bad = (UBL / "val" / "order-test-bad1.xml").read_bytes()
    payload = strip_prolog(bad)
    body = envelope(payload, message_id="UBL-BAD", message_type="UBL-Order")
    status, problem, _ = await ubl_gw.post(body)
    assert status == 422
    err = problem["errors"][0]
    assert "ChannelCod" in err["path"]
    line_text = body.decode().split("\n")[err["line"] - 1]
    assert "ChannelCod" in line_text  # the line number points at the offending element
    assert err["column"] == line_text.index("<") + 1


def wco_driver(tmp_path: Path) -> Path:
    """HMRC compiles MetaData + Declaration together; lxml needs one driver schema importing both."""
    base = WCO / "schemas" / "wco" / "declaration"
    wrapper = tmp_path / "wco_metadata.xsd"
    wrapper.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'targetNamespace="urn:wco:datamodel:WCO:DocumentMetaData-DMS:2">\n'
        f'  <xs:include schemaLocation="{(base / "DocumentMetaData_2_DMS.xsd").as_uri()}"/>\n'
        f'  <xs:import namespace="urn:wco:datamodel:WCO:DEC-DMS:2" '
        f'schemaLocation="{(base / "WCO_DEC_2_DMS.xsd").as_uri()}"/>\n'
        "</xs:schema>\n"
    )
    return wrapper


def test_hmrc_wco_declarations_validate_offline_and_defects_are_refused(tmp_path: Path) -> None:
    from gateway.errors import InvalidMessage, MalformedXML
    from gateway.settings.model import MessageType

    validator = Validator([MessageType("WCO-DEC", wco_driver(tmp_path), "MetaData")])
    samples = sorted((WCO / "examples" / "annotated_XML_samples").rglob("*.xml"))
    assert len(samples) >= 300
    ok = 0
    for i, path in enumerate(samples):
        raw = path.read_bytes()
        if path.name in WCO_NOT_WELL_FORMED:
            with pytest.raises(MalformedXML) as exc:
                validator.check(raw)
            assert "line" in exc.value.detail
            continue
        validator.check(envelope(strip_prolog(raw), message_id=f"W-{i}", message_type="WCO-DEC"))
        ok += 1
    assert ok == len(samples) - len(WCO_NOT_WELL_FORMED)
    bad = (WCO / "examples" / "example_submission_declaration_400.xml").read_bytes()
    with pytest.raises(InvalidMessage) as exc:
        validator.check(envelope(strip_prolog(bad), message_id="W-400", message_type="WCO-DEC"))
    assert "unknown" in str(exc.value.problems[0])


def attack_files() -> list[Path]:
    return sorted(p for p in ATTACKS.rglob("*") if p.is_file() and p.name not in ("SOURCES.md",))


@pytest.fixture
async def gw(tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]) -> AsyncIterator[RunningGateway]:
    settings = write_settings(tmp_path, config_doc(prefix))
    cleanup.append(settings)
    async with run_gateway(settings, role="ingress") as gateway:
        yield gateway


async def test_every_attack_file_is_refused_with_400(gw: RunningGateway) -> None:
    files = attack_files()
    assert len(files) >= 70
    for path in files:
        status, problem, _ = await gw.post(path.read_bytes())
        assert status == 400, (path.relative_to(ATTACKS), problem)
    assert await get_all(Names(gw.settings.broker.prefix).queue("vnaccs"), ack=False) == []


async def test_every_line_of_the_fuzz_lists_is_refused_without_a_crash(gw: RunningGateway) -> None:
    lines = [
        ln
        for f in ("XXE_Fuzzing.txt", "xml-attacks.txt")
        for ln in (ATTACKS / "payloadsallthethings" / f).read_bytes().splitlines()
        if ln.strip()
    ]
    statuses = await asyncio.gather(*(gw.post(ln) for ln in lines))
    assert {s for s, _, _ in statuses} <= {400}, "every fuzz line is malformed/not an envelope → 400"


async def test_entity_tricks_inside_a_real_envelope_read_no_file_and_no_url(gw: RunningGateway, tmp_path: Path) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="<!ENTITY leaked 'LEAKED'>")

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    try:
        payload = strip_prolog(CUSDEC_EXAMPLE.read_bytes())
        doctypes = [
            f'<!DOCTYPE Envelope [<!ENTITY x SYSTEM "{secret.as_uri()}">]>',
            f'<!DOCTYPE Envelope [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/entity">]>',
            f'<!DOCTYPE Envelope SYSTEM "http://127.0.0.1:{port}/dtd">',
            f'<!DOCTYPE Envelope [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/param"> %p;]>',
            '<!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>',
        ]
        for i, dt in enumerate(doctypes):
            body = envelope(payload, message_id=f"XXE-{i}").replace(b"<Envelope", dt.encode() + b"\n<Envelope", 1)
            body = body.replace(b"<MessageType>", b"<MessageType>&x;", 1) if b"ENTITY x" in body else body
            status, problem, _ = await gw.post(body)
            assert status == 400, problem
            assert problem["reason"] in ("doctype_forbidden", "malformed_xml")
        xinclude = payload.replace(
            "</Declaration>",
            f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{secret.as_uri()}" parse="text"/>'
            "</Declaration>",
            1,
        )
        status, problem, _ = await gw.post(envelope(xinclude, message_id="XI-1"))
        assert status == 422  # not processed: just an element the schema does not allow
    finally:
        await runner.cleanup()
    assert hits == [], "the gateway fetched a URL named by the document"
    queued = await get_all(Names(gw.settings.broker.prefix).queue("vnaccs"), ack=False)
    assert all(b"TOP-SECRET-CONTENT" not in m.body for m in queued)
    assert queued == []
