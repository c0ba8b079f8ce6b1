"""Bearer tokens: how one is read from `Authorization`, hashed, and matched against the configured hashes.

Tokens are never stored, only their sha256 (`token_sha256`). The presented token is
hashed, then compared with every configured hash using `hmac.compare_digest` and no early
exit, so the time taken depends neither on how much of a hash matched nor on whose it
is. Several hashes per owner allow rotation without downtime.

Partners (gateway/intake/identity.py) and the admin API (gateway/operations/access.py)
both match tokens here; what a match means is theirs to say.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Generic, TypeVar

from gateway.errors import Unauthenticated

Owner = TypeVar("Owner")


def token_hash(token: str) -> str:
    """sha256 hex of a token, as configured in `token_sha256`.

    `surrogateescape` because aiohttp decodes header bytes that are not UTF-8 that way:
    such a token must hash (to something unknown → 401), not crash the request.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bearer(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` value; Unauthenticated (bad_auth_scheme) otherwise."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization must be 'Bearer <token>'.", reason="bad_auth_scheme")
    return token


class TokenHashes(Generic[Owner]):
    """Configured token hashes, each naming its owner; `owner_of(token)` matches in constant time.

    Parameters:
        hashes: (sha256 hex, owner) pairs. The configuration guarantees that no hash names
            two owners, so a token names at most one.
    """

    def __init__(self, hashes: Iterable[tuple[str, Owner]]) -> None:
        self._hashes = [(h.encode("ascii"), owner) for h, owner in hashes]

    def owner_of(self, token: str) -> Owner | None:
        """The owner of the hash `token` hashes to, or None. Every hash is compared, whichever matches."""
        presented = token_hash(token).encode("ascii")
        found: Owner | None = None
        for stored, owner in self._hashes:  # no early exit: constant work per request
            if hmac.compare_digest(stored, presented):
                found = owner
        return found
