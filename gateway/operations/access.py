"""Who may use the admin API: the admin bearer token, and nothing else.

Matching is gateway/credentials.py's (sha256 only, every configured hash compared in
constant time). Partner tokens never pass: the settings refuse an admin hash that is also
a partner's, and only `[admin]` hashes are compared here.
"""

from __future__ import annotations

from gateway.credentials import TokenHashes, bearer
from gateway.errors import Forbidden, Unauthenticated
from gateway.settings.model import Admin


def check_admin(authorization: str | None, admin: Admin) -> None:
    """Allow the admin API only with an admin token; raise otherwise.

    Raises Forbidden (403, reason admin_disabled) when no admin token is configured, so a
    forgotten setting closes the API instead of opening it; Unauthenticated (401) for a
    missing or wrong token (missing_token, bad_auth_scheme, bad_admin_token).
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
    if TokenHashes((h, True) for h in hashes).owner_of(bearer(authorization)) is None:
        raise Unauthenticated("The admin token is not valid.", reason="bad_admin_token")
