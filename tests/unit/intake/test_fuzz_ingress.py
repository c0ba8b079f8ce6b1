"""Fuzzing the partner door: no input makes the parser, the envelope checks, the signature check
or the HTTP path crash or answer 500.

Four properties, each bounded (`max_examples`, no deadline; ~10 s in all on 2 cores):
- the offline checks (`Validator.check`, what `swgw validate` and ingress run) on random
  bytes, mutated real messages and generated XML-like documents;
- signature verification on mutated signed envelopes;
- token lookup on Authorization headers of any bytes (it found a 500: non-UTF-8 header
  bytes reached `str.encode` as surrogates; auth.token_hash now hashes them);
- the full HTTP path on a real listener (broker deliberately unreachable, so a message
  that passes every check ends in 503), with raw requests whose headers may hold any byte.
Hypothesis keeps failing examples in `.hypothesis/` and replays them first next time.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.errors import Forbidden, IngressError
from gateway.intake import rules
from gateway.intake.identity import Authenticator
from gateway.intake.signature import SignatureVerifier
from gateway.intake.validation import Validator, parse_xml
from gateway.settings.model import MessageType, Partner
from tests.fixtures.security.pki import sign_envelope, signing_identity
from tests.helpers import SCHEMAS, TOKEN, RunningGateway, config_doc, free_port, run_gateway, sha, write_settings

EXAMPLES = [p.read_bytes() for p in sorted((SCHEMAS / "examples" / "CUSDEC").rglob("*.xml"))]
VALID = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()
SIGNER = signing_identity("KH-NSW")
SIGNED = sign_envelope(VALID.replace(b"<From>VN-NSW</From>", b"<From>KH-NSW</From>"), SIGNER)
SIGNING_TOKEN = "kh-fuzz-token"
NAMES = ["Envelope", "Header", "Body", "MessageId", "From", "To", "MessageType", "SentAt", "Declaration", "Signature"]
NAMESPACES = ["urn:swgw:envelope:1", "http://www.w3.org/2000/09/xmldsig#", "", "urn:x", "urn:wco:datamodel:x"]
BAD_BYTES = [b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"&a;", b"\x00", b"\xff\xfe", b"]]>", b"<?xml version='1.1'?>", b"&#0;"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] | None = None, *, gentle: bool = False) -> bytes:
    """A real message with a few bytes inserted, deleted, replaced or duplicated.

    `gentle` only edits text content, so the document stays well-formed and reaches the
    schema, business-rule and signature checks instead of stopping at the parser.
    """
    data = bytearray(draw(st.sampled_from(seeds or [*EXAMPLES, SIGNED])))
    ops = ["text"] if gentle else ["text", "insert", "delete", "replace", "duplicate", "bad"]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(ops))
        texts = [m.start() + 1 for m in re.finditer(rb">[^<\s]", data)]
        if op == "text" and texts:
            at = draw(st.sampled_from(texts))
            data[at:at] = draw(st.text("abcXYZ019-:.T ", min_size=1, max_size=6)).encode()
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 200))]
        else:
            data[at:at] = draw(st.sampled_from(BAD_BYTES))
    return bytes(data)


def _element(name: str, ns: str, children: list[str], text: str) -> str:
    xmlns = f' xmlns="{ns}"' if ns else ""
    return f"<{name}{xmlns}>{text}{''.join(children)}</{name}>"


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20).map(
    lambda t: t.replace("&", "&amp;").replace("<", "&lt;")
)
_XMLISH = st.recursive(
    st.builds(_element, st.sampled_from(NAMES), st.sampled_from(NAMESPACES), st.just([]), _TEXT),
    lambda kids: st.builds(
        _element, st.sampled_from(NAMES), st.sampled_from(NAMESPACES), st.lists(kids, max_size=6), _TEXT
    ),
    max_leaves=30,
).map(lambda s: s.encode("utf-8"))

BODIES = st.one_of(
    st.binary(max_size=2000), mutated(gentle=True), mutated(), _XMLISH, st.sampled_from([*EXAMPLES, SIGNED])
)


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator([MessageType("CUSDEC", SCHEMAS / "customs" / "declaration.xsd")], rules=rules.check)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_offline_checks_never_crash(validator: Validator, body: bytes) -> None:
    try:
        validator.check(body)
    except IngressError as exc:
        error = exc
    else:
        return
    assert error.status in (400, 422), error
    assert error.detail


@pytest.fixture(scope="module")
def signing_partner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Partner, SignatureVerifier]:
    path = tmp_path_factory.mktemp("fuzz") / "kh.pem"
    path.write_bytes(SIGNER.cert_pem)
    partner = Partner(id="KH-NSW", token_sha256=(sha("x"),), signing_cert=(path,))
    return partner, SignatureVerifier([partner])


@settings(max_examples=200, deadline=None)
@given(body=mutated([SIGNED]))
def test_signature_check_never_crashes_on_mutated_signed_envelopes(
    signing_partner: tuple[Partner, SignatureVerifier], body: bytes
) -> None:
    partner, verifier = signing_partner
    try:
        root = parse_xml(body)
    except IngressError:
        return
    try:
        verifier.verify(partner, root)
    except Forbidden as exc:
        error = exc
    else:
        return
    assert error.reason in ("signature_missing", "signature_invalid")


_HEADER_BYTES = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=300, deadline=None)
@given(header=st.one_of(_HEADER_BYTES.map(lambda b: b"Bearer " + b), _HEADER_BYTES))
def test_authorization_header_of_any_bytes_is_401_or_a_partner(header: bytes) -> None:
    authn = Authenticator([Partner(id="VN-NSW", token_sha256=(sha(TOKEN),))])
    value = header.decode("utf-8", "surrogateescape")  # how aiohttp hands header bytes over
    try:
        authn.partner_for(value)
    except IngressError as exc:
        error = exc
    else:
        return
    assert error.status == 401


# -- the full HTTP path -------------------------------------------------------------------------


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    (tmp_path / "kh.pem").write_bytes(SIGNER.cert_pem)
    doc = config_doc(
        "swgwt-fuzz",
        broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # nothing listens: a passing message gets 503
        partners=[
            {"id": "VN-NSW", "token_sha256": [sha(TOKEN)]},  # no rate_per_s: not rate-limited
            {"id": "KH-NSW", "token_sha256": [sha(SIGNING_TOKEN)], "signing_cert": "kh.pem"},
        ],
        broker={"reconnect_interval_s": 30},
    )
    doc["dedup"] = {"backend": "none"}
    async with run_gateway(write_settings(tmp_path, doc), wait_ready=False, role="ingress") as gateway:
        yield gateway


_CONTENT_TYPES = st.one_of(
    st.sampled_from([b"text/xml", b"application/xml; charset=utf-8", b"application/json", b""]), _HEADER_BYTES
)
_AUTH = st.one_of(
    st.sampled_from([f"Bearer {TOKEN}".encode(), f"Bearer {SIGNING_TOKEN}".encode(), b"Bearer", b""]),
    _HEADER_BYTES.map(lambda b: b"Bearer " + b),
    _HEADER_BYTES,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """A partner's good request with one part (mostly the body), or all of them, fuzzed.

    Fuzzing one part at a time gets most examples past the cheap checks into parsing,
    signature verification, validation and publishing, where the interesting code is.
    """
    signed = draw(st.booleans())
    token, body = (SIGNING_TOKEN, SIGNED) if signed else (TOKEN, VALID)
    content_type, authorization = b"application/xml", f"Bearer {token}".encode()
    part = draw(st.sampled_from(["none", "body", "body", "body", "body", "content_type", "authorization", "all"]))
    if part in ("body", "all"):
        body = draw(
            st.one_of(mutated([body], gentle=True), mutated([body]), mutated(), _XMLISH, st.binary(max_size=500))
        )
    if part in ("content_type", "all"):
        content_type = draw(_CONTENT_TYPES)
    if part in ("authorization", "all"):
        authorization = draw(_AUTH)
    return content_type, authorization, body


ALLOWED = {400, 401, 403, 408, 413, 415, 422, 429, 431, 503}


async def _exchange(port: int, content_type: bytes, authorization: bytes, body: bytes) -> tuple[int, bytes, bytes]:
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: " + content_type + b"\r\nAuthorization: " + authorization + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, head_bytes, payload


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
async def test_http_path_answers_every_request_without_a_500(
    gw: RunningGateway, request: tuple[bytes, bytes, bytes]
) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    content_type, authorization, body = request
    status, head, payload = await _exchange(port, content_type, authorization, body)
    event(f"HTTP {status}")
    assert status in ALLOWED, (status, payload[:300])
    if b"application/problem+json" in head:  # the gateway's own answers are problem+json with a reason
        problem = json.loads(payload)
        assert problem["status"] == status
