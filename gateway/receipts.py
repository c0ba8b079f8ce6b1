"""Signed receipts: proof that the gateway received these exact bytes at this time (issue 14).

A receipt is a JWS in compact serialization (RFC 7515), signed with EdDSA (an Ed25519
key) or ES256 (an EC P-256 key), chosen by the key's type. Its payload is JSON::

    {"body_sha256": "<hex SHA-256 of the exact body bytes received>", "message_id": "...",
     "message_type": "...", "receipt_version": 1, "received_at": "<ISO-8601>",
     "receiver": "...", "sender": "..."}

and its protected header `{"alg": "EdDSA" | "ES256", "kid": "<key id>", "typ": "swgw-receipt+jws"}`.
The key id is the key's RFC 7638 JWK thumbprint (SHA-256, base64url), so it is derived
from the public key alone: the same PEM file always has the same kid, on every replica.

The payload is canonical (sorted keys, no whitespace) and made only of what the journal
record keeps (sender, id, type, receiver, digest, received_at), so a receipt is never
stored: a duplicate's 200 and the status API rebuild the same payload and sign it again.
Ed25519 signatures are deterministic (RFC 8032), so while the signing key is unchanged the
JWS is the same byte for byte; after a rotation it carries the same payload under the new
kid. An ES256 signature differs at each signing (random nonce), its payload does not.

Keys come from PEM files (`[receipts] signing_keys`): the first signs, all verify, and
`GET /v1/receipt-keys` publishes all of them as a JWKS. Verification (`verify`) takes a
JWKS, never the header's say-so: the kid picks a published key, the algorithm must be the
one that key is for. All JOSE work is PyJWT's (with `cryptography`); this module only
chooses keys, builds the payload and turns PyJWT's exceptions into `ReceiptError`.

This is a kernel module: settings loads the keys (errors name the key and the file),
intake signs, the CLI verifies (`swgw verify-receipt`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.errors import ReceiptError

HEADER = "Swgw-Receipt"
"""The response header that carries the compact JWS (also in the JSON field `receipt`)."""

TYP = "swgw-receipt+jws"
VERSION = 1
ALGORITHMS = ("EdDSA", "ES256")
FIELDS = ("message_id", "sender", "receiver", "message_type", "body_sha256", "received_at")


@dataclass(frozen=True)
class ReceiptFacts:
    """What a receipt attests; everything the journal record keeps too."""

    message_id: str
    sender: str
    receiver: str
    message_type: str
    body_sha256: str  # hex
    received_at: str  # ISO-8601, as in the 202

    def payload(self) -> bytes:
        """Canonical JSON: the same facts always give the same bytes."""
        claims: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        claims["receipt_version"] = VERSION
        return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 over the key's required members, sorted, no whitespace; base64url."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[str(jwk["kty"])]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """One key from a PEM file: its private key (None when only the public key was given)."""

    path: Path
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]  # public, with kid, alg and use

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """A PEM private key (PKCS#8 or SEC1), Ed25519 or EC P-256. ReceiptError says what is wrong."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReceiptError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ReceiptError(
                f"{path} is not an unencrypted PEM private key ({exc}); make one with "
                "`openssl genpkey -algorithm ed25519 -out receipts.pem`"
            ) from exc
        public: dict[str, Any]
        if isinstance(key, ed25519.Ed25519PrivateKey):
            alg, public = "EdDSA", OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            alg, public = "ES256", ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            raise ReceiptError(
                f"{path} holds a {type(key).__name__}; receipts are signed with Ed25519 (EdDSA) or EC P-256 (ES256)"
            )
        kid = thumbprint(public)
        return cls(path, kid, alg, key, {**public, "kid": kid, "alg": alg, "use": "sig"})


@dataclass(frozen=True)
class KeyRing:
    """The configured keys: `keys[0]` signs, every one is published and verifies."""

    keys: tuple[SigningKey, ...]

    @classmethod
    def load(cls, paths: Sequence[Path]) -> KeyRing:
        if not paths:
            raise ReceiptError("no signing key given")
        return cls(tuple(SigningKey.load(p) for p in paths))

    @property
    def signer(self) -> SigningKey:
        return self.keys[0]

    def sign(self, facts: ReceiptFacts) -> str:
        key = self.signer
        return jwt.api_jws.encode(facts.payload(), key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": TYP})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(k.jwk) for k in self.keys]}


def verify(token: str, jwks: Mapping[str, Any], *, body: bytes | None = None) -> dict[str, Any]:
    """The receipt's payload if `token` is signed by a key of `jwks` (and is for `body`, when given).

    Raises ReceiptError with the reason: malformed, unknown kid, bad signature, wrong body.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.exceptions.PyJWTError as exc:
        raise ReceiptError(f"not a compact JWS: {exc}") from exc
    kid = header.get("kid")
    try:
        keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(dict(jwks)).keys if k.key_id}
    except jwt.exceptions.PyJWTError as exc:
        raise ReceiptError(f"the key set cannot be used: {exc}") from exc
    if kid not in keys:
        raise ReceiptError(f"signed with key {kid!r}, which is not among the published keys {sorted(keys)}")
    key = keys[kid]
    alg = key.algorithm_name  # the key decides the algorithm, never the header
    if alg not in ALGORITHMS:
        raise ReceiptError(f"key {kid!r} is for {alg}; receipts use {' or '.join(ALGORITHMS)}")
    try:
        payload = jwt.api_jws.decode(token, key.key, algorithms=[alg])
    except jwt.exceptions.PyJWTError as exc:
        raise ReceiptError(f"the signature does not verify with key {kid!r}: {exc}") from exc
    try:
        claims: dict[str, Any] = json.loads(payload)
    except ValueError as exc:
        raise ReceiptError("the signed payload is not JSON") from exc
    if not isinstance(claims, dict) or any(name not in claims for name in FIELDS):
        raise ReceiptError("the signed payload is not a receipt (it lacks " + ", ".join(FIELDS) + ")")
    if body is not None and body_sha256(body) != claims["body_sha256"]:
        raise ReceiptError(
            f"the body's SHA-256 is {body_sha256(body)}, the receipt is for {claims['body_sha256']}: "
            "not the bytes the gateway received"
        )
    return claims
