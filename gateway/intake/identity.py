"""Who is sending: bearer token and/or client certificate → partner; and the admin credential.

Tokens are never stored, only their sha256. The presented token is hashed, then compared
with every configured hash using `hmac.compare_digest` and no early exit, so the time taken
depends neither on how much of a hash matched nor on which partner it belongs to. Several
hashes per partner allow rotation without downtime.

A partner's `auth` mode decides what proves its identity:

    token   a bearer token (a client certificate, if any, is ignored)
    mtls    a client certificate alone, mapped by sha256 fingerprint or subject
    both    a bearer token and a client certificate mapped to the same partner

The TLS layer (tls.py) has already checked that a client certificate chains to the
configured CA before it gets here; this module only maps it to a partner. Every refusal is
an `Unauthenticated` (401) whose `reason` is a bounded metric label and whose detail never
contains the token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from cryptography import x509

from gateway.errors import Forbidden, Unauthenticated
from gateway.settings.model import Admin, Partner


def token_hash(token: str) -> str:
    """sha256 hex of a token, as configured in `token_sha256`.

    `surrogateescape` because aiohttp decodes header bytes that are not UTF-8 that way:
    such a token must hash (to something unknown → 401), not crash the request.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def certificate_fingerprint(der: bytes) -> str:
    """sha256 of the DER certificate, lowercase hex: `cert_fingerprint_sha256`."""
    return hashlib.sha256(der).hexdigest()


def certificate_subject(der: bytes) -> str:
    """RFC 4514 subject (`CN=VN-NSW,O=Customs,C=VN`): `cert_subject`."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization must be 'Bearer <token>'.", reason="bad_auth_scheme")
    return token


def _match(hashes: Iterable[bytes], token: str) -> bool:
    presented = token_hash(token).encode("ascii")
    found = False
    for stored in hashes:  # no early exit: constant work per request
        found |= hmac.compare_digest(stored, presented)
    return found


class Authenticator:
    """Maps a request's credentials to the configured partner, or raises 401.

    Parameters:
        partners: the configured partners; their token hashes, certificate fingerprints and
            subjects are indexed once here. config.py guarantees none of them is shared by
            two partners, so a credential names at most one partner.
    """

    def __init__(self, partners: Iterable[Partner]) -> None:
        partners = tuple(partners)
        self._hashes: list[tuple[bytes, Partner]] = [(h.encode("ascii"), p) for p in partners for h in p.token_sha256]
        self._by_fingerprint = {fp: p for p in partners for fp in p.cert_fingerprint_sha256}
        self._by_subject = {s: p for p in partners for s in p.cert_subject}

    def partner_for(self, authorization: str | None, peer_cert: bytes | None = None) -> Partner:
        """Resolve an `Authorization` header value and the peer's verified DER certificate.

        Raises Unauthenticated (401) with reason missing_token, bad_auth_scheme,
        unknown_token, unknown_certificate or certificate_mismatch.
        """
        cert_partner = self._certificate_partner(peer_cert) if peer_cert else None
        if not authorization:
            if cert_partner is not None and cert_partner.auth == "mtls":
                return cert_partner
            if peer_cert and cert_partner is None:
                raise Unauthenticated(
                    "The client certificate is not mapped to any partner and no bearer token was sent; "
                    "ask the operator to register the certificate's fingerprint or subject.",
                    reason="unknown_certificate",
                )
            raise Unauthenticated(
                "Missing Authorization header; send 'Authorization: Bearer <token>'.", reason="missing_token"
            )
        partner = self._token_partner(_bearer(authorization))
        if partner.auth == "token":
            return partner
        if cert_partner is not partner:  # "both": the certificate must be this partner's too
            raise Unauthenticated(
                f"Partner {partner.id!r} must also present its registered client certificate "
                f"({'none was presented' if not peer_cert else 'the one presented belongs to someone else'}).",
                reason="certificate_mismatch",
            )
        return partner

    def _token_partner(self, token: str) -> Partner:
        presented = token_hash(token).encode("ascii")
        found: Partner | None = None
        for stored, partner in self._hashes:  # no early exit: constant work per request
            if hmac.compare_digest(stored, presented):
                found = partner
        if found is None:
            raise Unauthenticated("The bearer token is not known to this gateway.", reason="unknown_token")
        return found

    def _certificate_partner(self, der: bytes) -> Partner | None:
        partner = self._by_fingerprint.get(certificate_fingerprint(der))
        if partner is None and self._by_subject:
            partner = self._by_subject.get(certificate_subject(der))
        return partner


def check_admin(authorization: str | None, admin: Admin) -> None:
    """Allow the admin API only with an admin token; raise otherwise.

    Raises Forbidden (403, reason admin_disabled) when no admin token is configured, so a
    forgotten setting closes the API instead of opening it; Unauthenticated (401) for a
    missing or wrong token. Partner tokens never pass: config.py refuses an admin hash that
    is also a partner's, and only `admin.token_hashes` are compared here.
    """
    # An Admin built in code may set only `token_sha256`; one loaded from TOML sets both.
    hashes = admin.token_hashes or ((admin.token_sha256,) if admin.token_sha256 else ())
    if not hashes:
        raise Forbidden(
            "The admin API is disabled: set [admin] token_sha256 (or token_sha256_env / token_sha256_file).",
            reason="admin_disabled",
        )
    if not authorization:
        raise Unauthenticated("The admin API needs 'Authorization: Bearer <admin token>'.", reason="missing_token")
    if not _match((h.encode("ascii") for h in hashes), _bearer(authorization)):
        raise Unauthenticated("The admin token is not valid.", reason="bad_admin_token")
