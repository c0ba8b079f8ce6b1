"""Message signatures: a signed envelope verifies only with the partner's pinned certificate, whole."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import ConfigError, Forbidden, IngressError
from gateway.intake.signature import DS_NS, SignatureVerifier
from gateway.intake.validation import Validator, parse_xml
from gateway.settings.model import Partner
from tests.fixtures.security.pki import Issued, issue, sign_envelope, signing_identity
from tests.helpers import SCHEMAS, sha

BODY = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()


def _partner(tmp_path: Path, *certs: Issued, pid: str = "VN-NSW") -> Partner:
    paths = []
    for i, c in enumerate(certs):
        path = tmp_path / f"{pid}-{i}.pem"
        path.write_bytes(c.cert_pem)
        paths.append(path)
    return Partner(id=pid, token_sha256=(sha("t"),), signing_cert=tuple(paths))


def _verify(partner: Partner, body: bytes, **kwargs: object) -> None:
    SignatureVerifier([partner], **kwargs).verify(partner, parse_xml(body))  # type: ignore[arg-type]


def _reason(partner: Partner, body: bytes, **kwargs: object) -> str:
    with pytest.raises(Forbidden) as err:
        _verify(partner, body, **kwargs)
    assert err.value.status == 403
    return err.value.reason


def test_signed_envelope_verifies_and_passes_the_envelope_schema(tmp_path: Path) -> None:
    signer = signing_identity("VN-NSW")
    signed = sign_envelope(BODY, signer)
    _verify(_partner(tmp_path, signer), signed)
    env = Validator([]).read_envelope(signed)  # the XSD allows ds:Signature as the last child
    assert env.sender == "VN-NSW"


def test_partner_without_signing_cert_needs_no_signature(tmp_path: Path) -> None:
    partner = Partner(id="VN-NSW", token_sha256=(sha("t"),))
    _verify(partner, BODY)


def test_unsigned_message_from_a_signing_partner_is_refused(tmp_path: Path) -> None:
    partner = _partner(tmp_path, signing_identity("VN-NSW"))
    assert _reason(partner, BODY) == "signature_missing"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"<To>VN-VNACCS</To>", b"<To>VN-OTHER</To>"),  # header: routing
        (b"<MessageType>CUSDEC</MessageType>", b"<MessageType>CUSRES</MessageType>"),
        (b"<DeclarationOfficeID>", b"<DeclarationOfficeID>X"),  # payload
    ],
)
def test_any_change_after_signing_is_refused(tmp_path: Path, old: bytes, new: bytes) -> None:
    signer = signing_identity("VN-NSW")
    signed = sign_envelope(BODY, signer)
    assert old in signed
    assert _reason(_partner(tmp_path, signer), signed.replace(old, new, 1)) == "signature_invalid"


def test_an_embedded_certificate_is_never_trusted_by_itself(tmp_path: Path) -> None:
    # The attacker signs with their own key and embeds their own certificate in KeyInfo.
    attacker = signing_identity("ATTACKER")
    signed = sign_envelope(BODY, attacker)
    assert _reason(_partner(tmp_path, signing_identity("VN-NSW")), signed) == "signature_invalid"


def test_rotation_accepts_any_configured_certificate(tmp_path: Path) -> None:
    old, new = signing_identity("VN-NSW"), signing_identity("VN-NSW-2027")
    partner = _partner(tmp_path, old, new)
    _verify(partner, sign_envelope(BODY, new, embed_cert=False))
    _verify(partner, sign_envelope(BODY, old))


def test_expired_signing_certificate_is_refused(tmp_path: Path) -> None:
    signer = signing_identity("VN-NSW")
    partner = _partner(tmp_path, signer)
    later = datetime.now(UTC) + timedelta(days=30)
    assert _reason(partner, sign_envelope(BODY, signer), clock=lambda: later) == "signature_invalid"


def test_a_signature_over_only_part_of_the_envelope_is_refused(tmp_path: Path) -> None:
    # A valid signature whose Reference points at the payload leaves the header unsigned.
    from signxml import methods
    from signxml.signer import XMLSigner

    signer = signing_identity("VN-NSW")
    root = etree.fromstring(BODY)
    payload = root.find("{urn:swgw:envelope:1}Body")[0]  # type: ignore[index]
    payload.set("Id", "p1")
    signed = XMLSigner(method=methods.enveloped).sign(root, key=signer.key_pem, reference_uri="#p1")
    assert _reason(_partner(tmp_path, signer), etree.tostring(signed)) == "signature_invalid"


def _forge_base64_signature(body: bytes, signer: Issued) -> bytes:
    """A signature valid for *every* envelope, if a verifier honoured the base64 transform.

    With URI="" and a base64 transform, the digest is taken over the base64-decoded text
    directly under Envelope, which is only whitespace: sha256(b""). The partner's key signs
    that once, and the signature could be pasted under any other message.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    root = etree.fromstring(body)
    ds = f"{{{DS_NS}}}"
    sig = etree.SubElement(root, f"{ds}Signature", nsmap={"ds": DS_NS})
    info = etree.SubElement(sig, f"{ds}SignedInfo")
    etree.SubElement(info, f"{ds}CanonicalizationMethod", Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    etree.SubElement(info, f"{ds}SignatureMethod", Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
    ref = etree.SubElement(info, f"{ds}Reference", URI="")
    transforms = etree.SubElement(ref, f"{ds}Transforms")
    etree.SubElement(transforms, f"{ds}Transform", Algorithm=f"{DS_NS}enveloped-signature")
    etree.SubElement(transforms, f"{ds}Transform", Algorithm=f"{DS_NS}base64")
    etree.SubElement(ref, f"{ds}DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
    etree.SubElement(ref, f"{ds}DigestValue").text = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    c14n = etree.tostring(etree.fromstring(etree.tostring(info)), method="c14n", exclusive=True)
    key = signer.key
    assert isinstance(key, rsa.RSAPrivateKey)
    value = key.sign(c14n, padding.PKCS1v15(), hashes.SHA256())
    etree.SubElement(sig, f"{ds}SignatureValue").text = base64.b64encode(value).decode()
    return etree.tostring(root)


def test_a_transform_that_narrows_what_is_signed_is_refused(tmp_path: Path) -> None:
    signer = signing_identity("VN-NSW")
    forged = _forge_base64_signature(BODY.replace(b"<To>VN-VNACCS</To>", b"<To>ANYONE</To>"), signer)
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    # signxml alone would accept it: the check in signature.py is what stops it.
    XMLVerifier().verify(forged, x509_cert=signer.cert, expect_config=SignatureConfiguration(location="./"))
    assert _reason(_partner(tmp_path, signer), forged) == "signature_invalid"


def test_signature_elsewhere_than_last_child_of_envelope_fails_the_envelope_schema() -> None:
    signed = sign_envelope(BODY, signing_identity("VN-NSW"))
    root = etree.fromstring(signed)
    sig = root[-1]
    root.find("{urn:swgw:envelope:1}Header").append(sig)  # type: ignore[union-attr]
    with pytest.raises(IngressError) as err:
        Validator([]).read_envelope(etree.tostring(root))
    assert err.value.status == 422


def test_unreadable_signing_certificate_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    partner = Partner(id="VN-NSW", token_sha256=(sha("t"),), signing_cert=(bad,))
    with pytest.raises(ConfigError) as err:
        SignatureVerifier([partner], config_file="gw.toml")
    assert "partners[0].signing_cert" in str(err.value)


def test_a_tls_client_certificate_of_the_partner_is_not_a_signing_key(tmp_path: Path) -> None:
    # Signing with a key whose certificate is not the configured one fails, even from the same CA.
    from tests.fixtures.security.pki import make_ca

    ca = make_ca()
    other = issue(ca, "VN-NSW", key_kind="rsa")
    assert _reason(_partner(tmp_path, signing_identity("VN-NSW")), sign_envelope(BODY, other)) == "signature_invalid"
