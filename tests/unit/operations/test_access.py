"""gateway.operations.access: the admin API's credential (closed when unset, admin tokens only)."""

from __future__ import annotations

import pytest

from gateway.errors import Forbidden, Unauthenticated
from gateway.operations.access import check_admin
from gateway.settings.model import Admin
from tests.helpers import sha


def _reason(authorization: str | None, admin: Admin) -> str:
    with pytest.raises(Unauthenticated) as err:
        check_admin(authorization, admin)
    assert err.value.status == 401
    return err.value.reason


def test_admin_api_is_closed_when_no_admin_token_is_configured() -> None:
    with pytest.raises(Forbidden) as err:
        check_admin("Bearer anything", Admin())
    assert err.value.reason == "admin_disabled"


def test_admin_token_passes_and_a_partner_token_does_not() -> None:
    admin = Admin(token_sha256=sha("admin-1"), token_hashes=(sha("admin-1"), sha("admin-2")))
    check_admin("Bearer admin-1", admin)
    check_admin("Bearer admin-2", admin)  # rotation
    check_admin("Bearer admin-1", Admin(token_sha256=sha("admin-1")))  # built in code, without token_hashes
    assert _reason("Bearer partner-token", admin) == "bad_admin_token"
    assert _reason(None, admin) == "missing_token"
    assert _reason("Token admin-1", admin) == "bad_auth_scheme"
