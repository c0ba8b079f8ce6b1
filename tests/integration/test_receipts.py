"""Signed receipts (issue 14) behind a running gateway on the real RabbitMQ: verified with the
published JWKS by PyJWT itself (what a partner would run), not only by our own verify();
refused for another body or an unknown key; key rotation; a duplicate's receipt; the status
API's receipt; `swgw verify-receipt` exit codes; check-config without [receipts]."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.errors import ConfigError, ReceiptError
from gateway.receipts import HEADER, KeyRing, verify
from gateway.settings.model import Settings
from tests.helpers import CUSDEC_BODY, TOKEN, RunningGateway, config_doc, run_gateway, with_message_id, write_settings

pytestmark = pytest.mark.integration


def make_key(path: Path, kind: str = "ed25519") -> Path:
    """A fresh private key in PEM (PKCS#8), as `openssl genpkey` writes it."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return path


def signed_settings(tmp_path: Path, prefix: str, keys: list[str]) -> Settings:
    doc = config_doc(prefix)
    doc["receipts"] = {"signing_keys": keys}
    return write_settings(tmp_path, doc)


async def jwks_of(gw: RunningGateway) -> dict[str, Any]:
    async with gw.session.get(f"{gw.url}/v1/receipt-keys") as resp:  # no credentials: public keys
        assert resp.status == 200
        keys: dict[str, Any] = await resp.json()
        return keys


def partner_verifies(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """What docs/partners.md tells a partner to do, with PyJWT alone: pick the key by kid, verify."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
    claims: dict[str, Any] = json.loads(jwt.api_jws.decode(token, key.key, algorithms=[key.algorithm_name]))
    return claims


def new_body() -> bytes:
    return with_message_id(CUSDEC_BODY, f"R-{uuid.uuid4().hex[:12]}")


async def test_a_202_receipt_verifies_with_the_published_keys_and_not_for_another_body_or_key(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = signed_settings(tmp_path, prefix, [make_key(tmp_path / "receipts-2026.pem").name])
    cleanup.append(settings)
    body = new_body()
    async with run_gateway(settings) as gw:
        status, answer, headers = await gw.post(body)
        jwks = await jwks_of(gw)
    assert status == 202
    token = answer["receipt"]
    assert headers[HEADER] == token
    claims = partner_verifies(token, jwks)
    assert claims == {
        "message_id": answer["message_id"],
        "sender": "VN-NSW",
        "receiver": "VN-VNACCS",
        "message_type": "CUSDEC",
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "received_at": answer["received_at"],
        "receipt_version": 1,
    }
    assert jwt.get_unverified_header(token)["kid"] == jwks["keys"][0]["kid"]
    assert verify(token, jwks, body=body) == claims

    with pytest.raises(ReceiptError, match="not the bytes the gateway received"):
        verify(token, jwks, body=body.replace(b"</Envelope>", b"</Envelope>\n"))
    # A payload changed by hand (another digest) no longer matches the signature.
    head, _, sig = token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps({**claims, "body_sha256": "0" * 64}).encode()).decode()
    with pytest.raises(jwt.exceptions.InvalidSignatureError):
        partner_verifies(f"{head}.{forged}.{sig}", jwks)
    with pytest.raises(ReceiptError, match="does not verify"):
        verify(f"{head}.{forged}.{sig}", jwks)
    # Keys nobody published: the gateway's kid is unknown; a key of the same kid but other bits fails.
    (tmp_path / "other").mkdir()
    other_settings = signed_settings(tmp_path / "other", prefix, [make_key(tmp_path / "other" / "k.pem").name])
    assert other_settings.receipts is not None
    other = KeyRing.load(other_settings.receipts.signing_keys).jwks()
    with pytest.raises(ReceiptError, match="not among the published keys"):
        verify(token, other)
    impostor = {"keys": [{**other["keys"][0], "kid": jwks["keys"][0]["kid"]}]}
    with pytest.raises(jwt.exceptions.InvalidSignatureError):
        partner_verifies(token, impostor)


async def test_rotation_the_new_key_signs_the_old_still_verifies_and_a_duplicate_keeps_its_payload(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    old = make_key(tmp_path / "receipts-2025.pem", "p256").name  # ES256 before, EdDSA after
    new = make_key(tmp_path / "receipts-2026.pem").name
    first = signed_settings(tmp_path, prefix, [old])
    cleanup.append(first)
    body = new_body()
    async with run_gateway(first) as gw:
        status, before, _ = await gw.post(body)
        old_jwks = await jwks_of(gw)
    assert status == 202
    assert jwt.get_unverified_header(before["receipt"])["alg"] == "ES256"

    rotated = signed_settings(tmp_path, prefix, [new, old])  # same config file, same dedup store
    async with run_gateway(rotated) as gw:
        jwks = await jwks_of(gw)
        status, again, _ = await gw.post(body)  # the duplicate: 200 and the original's facts
        fresh_status, fresh, _ = await gw.post(new_body())
    assert [k["kid"] for k in jwks["keys"]][1:] == [k["kid"] for k in old_jwks["keys"]]
    assert [k["alg"] for k in jwks["keys"]] == ["EdDSA", "ES256"]
    assert partner_verifies(before["receipt"], jwks) == partner_verifies(before["receipt"], old_jwks)
    assert (status, again["duplicate"], fresh_status) == (200, True, 202)
    assert jwt.get_unverified_header(fresh["receipt"])["kid"] == jwks["keys"][0]["kid"]
    assert jwt.get_unverified_header(again["receipt"])["kid"] == jwks["keys"][0]["kid"]
    assert partner_verifies(again["receipt"], jwks) == partner_verifies(before["receipt"], jwks)
    with pytest.raises(ReceiptError, match="not among the published keys"):
        verify(fresh["receipt"], old_jwks)  # a partner with the old key set must fetch the new one


async def test_a_duplicate_and_the_status_api_give_the_same_receipt_again(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = signed_settings(tmp_path, prefix, [make_key(tmp_path / "receipts.pem").name])
    cleanup.append(settings)
    body = new_body()
    async with run_gateway(settings) as gw:
        _, first, _ = await gw.post(body)
        status, dup, dup_headers = await gw.post(body)
        jwks = await jwks_of(gw)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with gw.session.get(f"{gw.url}/v1/messages/{first['message_id']}?receipt=1", headers=auth) as resp:
            assert resp.status == 200
            looked_up = await resp.json()
        async with gw.session.get(f"{gw.url}/v1/messages/{first['message_id']}", headers=auth) as resp:
            plain = await resp.json()
    assert status == 200
    assert dup_headers[HEADER] == dup["receipt"]
    # Ed25519 is deterministic: same key, same facts -> the same JWS byte for byte.
    assert dup["receipt"] == first["receipt"] == looked_up["receipt"]
    assert verify(looked_up["receipt"], jwks, body=body)["received_at"] == first["received_at"]
    assert "receipt" not in plain


async def test_without_receipts_the_gateway_answers_unsigned(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = write_settings(tmp_path, config_doc(prefix))
    cleanup.append(settings)
    async with run_gateway(settings) as gw:
        status, answer, headers = await gw.post(new_body())
        assert await jwks_of(gw) == {"keys": []}
    assert status == 202
    assert "receipt" not in answer
    assert HEADER not in headers


def swgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120, check=False
    )


async def test_verify_receipt_cli_exit_codes_and_check_config(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = signed_settings(tmp_path, prefix, [make_key(tmp_path / "receipts.pem").name])
    cleanup.append(settings)
    body = new_body()
    async with run_gateway(settings) as gw:
        _, answer, _ = await gw.post(body)
        jwks = await jwks_of(gw)
    token = answer["receipt"]
    (tmp_path / "body.xml").write_bytes(body)
    (tmp_path / "changed.xml").write_bytes(body + b" ")
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    (tmp_path / "receipt.jws").write_text(token + "\n")
    (tmp_path / "stranger").mkdir()
    make_key(tmp_path / "stranger" / "k.pem")
    stranger = signed_settings(tmp_path / "stranger", prefix, ["k.pem"])
    config = str(settings.path)

    ok = swgw("verify-receipt", token, "--body", str(tmp_path / "body.xml"), "--keys", str(tmp_path / "jwks.json"))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "signature and body" in ok.stderr
    by_config = swgw("verify-receipt", str(tmp_path / "receipt.jws"), "--config", config)
    assert by_config.returncode == 0, by_config.stderr
    changed = swgw("verify-receipt", token, "--body", str(tmp_path / "changed.xml"), "--config", config)
    assert changed.returncode == 1
    assert "not the bytes the gateway received" in changed.stderr
    unknown = swgw("verify-receipt", token, "--config", str(stranger.path))
    assert unknown.returncode == 1
    assert "not among the published keys" in unknown.stderr
    garbled = swgw("verify-receipt", token[:-4] + "AAAA", "--config", config)
    assert garbled.returncode == 1
    assert "does not verify" in garbled.stderr
    missing = swgw("verify-receipt", token, "--body", str(tmp_path / "nope.xml"), "--config", config)
    assert missing.returncode == 2
    assert "cannot read the body" in missing.stderr
    assert swgw("verify-receipt").returncode == 2  # argparse: RECEIPT is required

    unsigned = write_settings(tmp_path / "stranger", config_doc(prefix))  # overwrites its gateway.toml
    no_keys = swgw("verify-receipt", token, "--config", str(unsigned.path))
    assert no_keys.returncode == 2
    assert "no [receipts] table" in no_keys.stderr
    check = swgw("check-config", "--config", str(unsigned.path))
    assert check.returncode == 0, check.stderr
    assert "receipts: unsigned (no [receipts] table" in check.stdout
    check = swgw("check-config", "--config", config)
    assert f"receipts: signed with EdDSA key {jwks['keys'][0]['kid']} (receipts.pem)" in check.stdout


PARTNER_DOCS = Path(__file__).resolve().parents[2] / "docs" / "partners.md"  # the receipts section


def readme_snippet() -> str:
    """The partner's PyJWT snippet, as docs/partners.md prints it."""
    text = PARTNER_DOCS.read_text(encoding="utf-8").split("<!-- receipt-snippet -->", 1)[1]
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    return textwrap.dedent(block)


def run_snippet(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "snippet.py"], cwd=folder, capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_readme_snippet_verifies_a_receipt_with_pyjwt_alone(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = signed_settings(tmp_path, prefix, [make_key(tmp_path / "receipts.pem").name])
    cleanup.append(settings)
    body = new_body()
    async with run_gateway(settings) as gw:
        _, answer, _ = await gw.post(body)
        (tmp_path / "jwks.json").write_text(json.dumps(await jwks_of(gw)))
    (tmp_path / "receipt.jws").write_text(answer["receipt"])
    (tmp_path / "snippet.py").write_text(readme_snippet())
    (tmp_path / "body.xml").write_bytes(body)
    ok = run_snippet(tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{answer['message_id']} received at {answer['received_at']}"
    (tmp_path / "body.xml").write_bytes(body.replace(b"<MessageId>", b"<MessageId> ", 1))
    bad = run_snippet(tmp_path)
    assert bad.returncode == 1
    assert "a receipt for other bytes" in bad.stderr


def test_bad_key_files_are_config_errors_naming_the_key_and_the_file(tmp_path: Path) -> None:
    good = make_key(tmp_path / "good.pem").name
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    rsa_free = tmp_path / "p384.pem"
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa_free.write_bytes(
        p384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cases = {
        "missing.pem": r"receipts\.signing_keys\[1\]: cannot read .*missing\.pem",
        "cert.pem": r"receipts\.signing_keys\[1\]: .*cert\.pem is not an unencrypted PEM private key",
        "p384.pem": r"receipts\.signing_keys\[1\]: .*p384\.pem holds a .*Ed25519 \(EdDSA\) or EC P-256",
        good: r"receipts\.signing_keys\[1\]: .*good\.pem is the same key as signing_keys\[0\]",
    }
    for name, pattern in cases.items():
        doc = config_doc("swgwt-cfg")
        doc["receipts"] = {"signing_keys": [good, name]}
        with pytest.raises(ConfigError, match=pattern) as caught:
            write_settings(tmp_path, doc)
        assert caught.value.file == str(tmp_path / "gateway.toml")
    doc = config_doc("swgwt-cfg")
    doc["receipts"] = {"signing_keys": []}
    with pytest.raises(ConfigError, match=r"receipts\.signing_keys: list at least one"):
        write_settings(tmp_path, doc)
