"""Who is sending: bearer token → partner.

Tokens are never stored, only their sha256. The presented token is hashed, then compared
with every configured hash using `hmac.compare_digest`, so the time taken does not depend
on how much of a hash matched. Several hashes per partner allow rotation without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from gateway.config import Partner
from gateway.errors import Unauthenticated


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Authenticator:
    def __init__(self, partners: Iterable[Partner]) -> None:
        self._hashes: list[tuple[bytes, Partner]] = [(h.encode("ascii"), p) for p in partners for h in p.token_sha256]

    def partner_for(self, authorization: str | None) -> Partner:
        """Resolve an `Authorization` header value; raise Unauthenticated (401) otherwise."""
        if not authorization:
            raise Unauthenticated(
                "Missing Authorization header; send 'Authorization: Bearer <token>'.", reason="missing_token"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Authorization must be 'Bearer <token>'.", reason="bad_auth_scheme")
        presented = token_hash(token).encode("ascii")
        found: Partner | None = None
        for stored, partner in self._hashes:  # no early exit: constant work per request
            if hmac.compare_digest(stored, presented):
                found = partner
        if found is None:
            raise Unauthenticated("The bearer token is not known to this gateway.", reason="unknown_token")
        return found
