"""Who is sending: bearer token and/or client certificate → partner.

Tokens are matched by gateway/credentials.py: only their sha256 is configured, and every
configured hash is compared in constant time, so the time taken depends neither on how
much of a hash matched nor on which partner it belongs to. Several hashes per partner
allow rotation without downtime.

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
from collections.abc import Iterable

from aiohttp import web
from cryptography import x509

from gateway.credentials import TokenHashes, bearer
from gateway.errors import Unauthenticated
from gateway.intake.tls import peer_certificate
from gateway.observability.metrics import Metrics
from gateway.settings.model import Partner


def certificate_fingerprint(der: bytes) -> str:
    """sha256 of the DER certificate, lowercase hex: `cert_fingerprint_sha256`."""
    return hashlib.sha256(der).hexdigest()


def certificate_subject(der: bytes) -> str:
    """RFC 4514 subject (`CN=VN-NSW,O=Customs,C=VN`): `cert_subject`."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class Authenticator:
    """Maps a request's credentials to the configured partner, or raises 401.

    Parameters:
        partners: the configured partners; their token hashes, certificate fingerprints and
            subjects are indexed once here. config.py guarantees none of them is shared by
            two partners, so a credential names at most one partner.
    """

    def __init__(self, partners: Iterable[Partner]) -> None:
        partners = tuple(partners)
        self._tokens = TokenHashes((h, p) for p in partners for h in p.token_sha256)
        self._by_fingerprint = {fp: p for p in partners for fp in p.cert_fingerprint_sha256}
        self._by_subject = {s: p for p in partners for s in p.cert_subject}

    def partner_of(self, request: web.Request, metrics: Metrics) -> Partner:
        """The partner a request comes from (bearer token and/or TLS client certificate); a 401 is
        counted in `swgw_auth_failures_total` by reason before it is raised."""
        try:
            return self.partner_for(request.headers.get("Authorization"), peer_certificate(request))
        except Unauthenticated as exc:
            metrics.auth_failures.labels(exc.reason).inc()
            raise

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
        partner = self._tokens.owner_of(bearer(authorization))
        if partner is None:
            raise Unauthenticated("The bearer token is not known to this gateway.", reason="unknown_token")
        if partner.auth == "token":
            return partner
        if cert_partner is not partner:  # "both": the certificate must be this partner's too
            raise Unauthenticated(
                f"Partner {partner.id!r} must also present its registered client certificate "
                f"({'none was presented' if not peer_cert else 'the one presented belongs to someone else'}).",
                reason="certificate_mismatch",
            )
        return partner

    def _certificate_partner(self, der: bytes) -> Partner | None:
        partner = self._by_fingerprint.get(certificate_fingerprint(der))
        if partner is None and self._by_subject:
            partner = self._by_subject.get(certificate_subject(der))
        return partner
