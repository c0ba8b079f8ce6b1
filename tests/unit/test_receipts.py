"""gateway/receipts.py without a gateway: the kid is the RFC 7638 thumbprint (RFC 8037's own
vector), the payload is canonical, and verification lets the published key, not the receipt's
header, pick the algorithm."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.errors import ReceiptError
from gateway.receipts import KeyRing, ReceiptFacts, SigningKey, body_sha256, thumbprint, verify

FACTS = ReceiptFacts("M-1", "VN-NSW", "VN-VNACCS", "CUSDEC", body_sha256(b"<x/>"), "2026-12-01T08:00:00.000Z")


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "k.pem").write_bytes(pem)
    return KeyRing.load([tmp_path / "k.pem"])


def test_the_kid_is_the_rfc_7638_thumbprint_rfc_8037_a3() -> None:
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert thumbprint({**jwk, "kid": "ignored", "use": "sig"}) == thumbprint(jwk)


def test_the_payload_is_canonical_and_the_signature_deterministic(ring: KeyRing) -> None:
    assert FACTS.payload() == json.dumps(json.loads(FACTS.payload()), sort_keys=True, separators=(",", ":")).encode()
    assert ring.sign(FACTS) == ring.sign(FACTS)
    assert SigningKey.load(ring.signer.path).kid == ring.signer.kid
    assert jwt.get_unverified_header(ring.sign(FACTS)) == {
        "alg": "EdDSA",
        "kid": ring.signer.kid,
        "typ": "swgw-receipt+jws",
    }


def test_the_published_key_picks_the_algorithm_not_the_header(ring: KeyRing) -> None:
    token = ring.sign(FACTS)
    _, payload, _ = token.split(".")
    for alg in ("none", "HS256", "ES256"):
        header = jwt.utils.base64url_encode(json.dumps({"alg": alg, "kid": ring.signer.kid}).encode()).decode()
        with pytest.raises(ReceiptError, match="does not verify"):
            verify(f"{header}.{payload}.", ring.jwks())
    with pytest.raises(ReceiptError, match="not a compact JWS"):
        verify("not-a-jws", ring.jwks())
    assert verify(token, ring.jwks(), body=b"<x/>")["message_id"] == "M-1"
