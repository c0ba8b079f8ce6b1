"""Partner authentication: tokens (hashed, rotated), client certificates, and the configuration that
feeds them and the admin credential (secrets from env vars and files, cross-checks).

Constant-time matching is tested in test_credentials.py, the admin check in test_access.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError, Unauthenticated
from gateway.intake.identity import Authenticator
from gateway.settings.load import load_settings
from gateway.settings.model import Partner
from tests.fixtures.security.pki import Issued, issue, make_ca
from tests.helpers import config_doc, sha, to_toml


def der(c: Issued) -> bytes:
    return c.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def certs() -> dict[str, Issued]:
    ca = make_ca()
    return {name: issue(ca, name) for name in ("MTLS-P", "BOTH-P", "TOKEN-P", "NOBODY")}


@pytest.fixture
def authn(certs: dict[str, Issued]) -> Authenticator:
    return Authenticator(
        [
            Partner(id="TOKEN-P", token_sha256=(sha("old-token"), sha("new-token"))),
            Partner(id="MTLS-P", token_sha256=(), auth="mtls", cert_fingerprint_sha256=(certs["MTLS-P"].fingerprint,)),
            Partner(
                id="BOTH-P", token_sha256=(sha("both-token"),), auth="both", cert_subject=(certs["BOTH-P"].subject,)
            ),
        ]
    )


def _reason(fn: Any, *args: Any) -> str:
    with pytest.raises(Unauthenticated) as err:
        fn(*args)
    assert err.value.status == 401
    return err.value.reason


def test_every_configured_token_of_a_partner_works_for_rotation(authn: Authenticator) -> None:
    assert authn.partner_for("Bearer old-token").id == "TOKEN-P"
    assert authn.partner_for("bearer   new-token ").id == "TOKEN-P"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic dXNlcjpwYXNz", "bad_auth_scheme"),
        ("Bearer", "bad_auth_scheme"),
        ("Bearer wrong", "unknown_token"),
        ("Bearer \udcff\udcfe", "unknown_token"),  # non-UTF-8 header bytes, as aiohttp decodes them
        ("Bearer " + "x" * 10_000, "unknown_token"),
    ],
)
def test_bad_credentials_are_401_with_a_bounded_reason(authn: Authenticator, header: str | None, reason: str) -> None:
    assert _reason(authn.partner_for, header) == reason


def test_the_detail_never_contains_the_token(authn: Authenticator) -> None:
    with pytest.raises(Unauthenticated) as err:
        authn.partner_for("Bearer s3cr3t-guess")
    assert "s3cr3t-guess" not in err.value.detail


def test_mtls_partner_is_identified_by_its_certificate_alone(authn: Authenticator, certs: dict[str, Issued]) -> None:
    assert authn.partner_for(None, der(certs["MTLS-P"])).id == "MTLS-P"


def test_an_unmapped_certificate_without_token_is_401(authn: Authenticator, certs: dict[str, Issued]) -> None:
    assert _reason(authn.partner_for, None, der(certs["NOBODY"])) == "unknown_certificate"


def test_both_needs_the_token_and_its_own_certificate(authn: Authenticator, certs: dict[str, Issued]) -> None:
    assert authn.partner_for("Bearer both-token", der(certs["BOTH-P"])).id == "BOTH-P"
    assert _reason(authn.partner_for, "Bearer both-token") == "certificate_mismatch"
    assert _reason(authn.partner_for, "Bearer both-token", der(certs["MTLS-P"])) == "certificate_mismatch"
    assert _reason(authn.partner_for, None, der(certs["BOTH-P"])) == "missing_token"


def test_token_partner_may_present_any_verified_certificate(authn: Authenticator, certs: dict[str, Issued]) -> None:
    assert authn.partner_for("Bearer new-token", der(certs["NOBODY"])).id == "TOKEN-P"


# -- configuration ----------------------------------------------------------------------------


def _load(tmp_path: Path, env: dict[str, str] | None = None, **changes: Any) -> Any:
    doc = config_doc("swgwt-unit", **{k: v for k, v in changes.items() if k in ("partners", "server")})
    if "admin" in changes:
        doc["admin"] = changes["admin"]
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return load_settings(path, env=env or {})


def _config_error(tmp_path: Path, **changes: Any) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **changes)
    return str(err.value)


def test_token_hashes_from_env_var_and_file_are_merged(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "vn.sha256").write_text(f"# rotated 2026-11\n{sha('from-file')}  -\n\n")
    settings = _load(
        tmp_path,
        env={"VN_TOKENS": f"{sha('env-1')}, {sha('env-2')}"},
        partners=[
            {
                "id": "VN-NSW",
                "token_sha256": [sha("inline")],
                "token_sha256_env": "VN_TOKENS",
                "token_sha256_file": "secrets/vn.sha256",  # relative to the config file
            }
        ],
    )
    assert settings.partners[0].token_sha256 == (sha("inline"), sha("env-1"), sha("env-2"), sha("from-file"))
    assert Authenticator(settings.partners).partner_for("Bearer from-file").id == "VN-NSW"


def test_partner_may_keep_no_token_in_the_toml(tmp_path: Path) -> None:
    settings = _load(tmp_path, env={"T": sha("x")}, partners=[{"id": "VN-NSW", "token_sha256_env": "T"}])
    assert settings.partners[0].token_sha256 == (sha("x"),)


def test_admin_token_from_a_file_and_env_override(tmp_path: Path) -> None:
    (tmp_path / "admin.sha256").write_text(sha("adm-a") + "\n" + sha("adm-b") + "\n")
    settings = _load(tmp_path, admin={"token_sha256_file": "admin.sha256"})
    assert settings.admin.token_hashes == (sha("adm-a"), sha("adm-b"))
    assert settings.admin.token_sha256 == sha("adm-a")
    settings = _load(tmp_path, env={"SWGW_ADMIN_TOKEN_SHA256": sha("adm-env")}, admin={"token_sha256": sha("x")})
    assert settings.admin.token_hashes == (sha("adm-env"),)


def test_missing_env_var_names_the_key_and_the_variable(tmp_path: Path) -> None:
    msg = _config_error(tmp_path, partners=[{"id": "VN-NSW", "token_sha256_env": "NOPE_NOT_SET"}])
    assert "partners[0].token_sha256_env" in msg
    assert "NOPE_NOT_SET" in msg


def test_a_raw_token_where_a_hash_belongs_is_refused_without_printing_it(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("my-raw-secret-token\n")
    msg = _config_error(tmp_path, partners=[{"id": "VN-NSW", "token_sha256_file": "tok"}])
    assert "partners[0].token_sha256_file" in msg
    assert "my-raw-secret-token" not in msg


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"partners": [{"id": "A", "token_sha256": [sha("t")]}, {"id": "B", "token_sha256": [sha("t")]}]},
         "partners[1].token_sha256"),
        ({"admin": {"token_sha256": sha("t")}, "partners": [{"id": "A", "token_sha256": [sha("t")]}]},
         "admin.token_sha256"),
        ({"partners": [{"id": "A"}]}, "partners[0].token_sha256"),
        ({"partners": [{"id": "A", "token_sha256": [sha("t")], "auth": "cert"}]}, "partners[0].auth"),
        ({"partners": [{"id": "A", "auth": "mtls", "cert_subject": "CN=A"}]}, "partners[0].auth"),  # no client_ca
        ({"server": {"tls_key": "gateway.toml"}}, "server.tls_cert"),
        ({"partners": [{"id": "A", "token_sha256": [sha("t")], "cert_fingerprint_sha256": "zz"}]},
         "partners[0].cert_fingerprint_sha256"),
        ({"partners": [{"id": "A", "token_sha256": [sha("t")], "signing_cert": "missing.pem"}]},
         "partners[0].signing_cert"),
    ],
)  # fmt: skip
def test_unsafe_or_ambiguous_security_config_is_refused(tmp_path: Path, changes: dict[str, Any], key: str) -> None:
    assert f": {key}:" in _config_error(tmp_path, **changes)


def test_mtls_config_with_tls_files_and_openssl_style_fingerprint(tmp_path: Path, certs: dict[str, Issued]) -> None:
    ca = make_ca()
    server_cert, server_key = issue(ca, "gateway", usage="server").write(tmp_path, "server")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    fp = certs["MTLS-P"].fingerprint.upper()
    colons = ":".join(fp[i : i + 2] for i in range(0, 64, 2))
    server = {"tls_cert": str(server_cert), "tls_key": str(server_key), "client_ca": "ca.pem"}
    settings = _load(
        tmp_path, server=server, partners=[{"id": "MTLS-P", "auth": "mtls", "cert_fingerprint_sha256": colons}]
    )
    assert settings.server.client_ca == tmp_path / "ca.pem"
    assert settings.server.client_cert == "optional"
    assert settings.partners[0].cert_fingerprint_sha256 == (certs["MTLS-P"].fingerprint,)
    # ...and a token on an mtls-only partner is a mistake worth stopping for
    msg = _config_error(
        tmp_path,
        server=server,
        partners=[{"id": "M", "auth": "mtls", "cert_subject": "CN=M", "token_sha256": [sha("t")]}],
    )
    assert "partners[0].token_sha256" in msg
