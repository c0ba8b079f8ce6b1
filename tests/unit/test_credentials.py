"""gateway.credentials: bearer parsing, token hashing and constant-time matching."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.credentials import TokenHashes, bearer, token_hash
from gateway.errors import Unauthenticated


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_token_hash_is_the_configured_sha256_and_survives_non_utf8_header_bytes() -> None:
    assert token_hash("old-token") == sha("old-token")
    assert len(token_hash("\udcff\udcfe")) == 64  # aiohttp's surrogateescape decoding: hashed, not a crash


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc"])
def test_anything_but_bearer_and_a_token_is_bad_auth_scheme(header: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        bearer(header)
    assert err.value.reason == "bad_auth_scheme"


def test_bearer_is_case_insensitive_and_strips_the_token() -> None:
    assert bearer("bearer   new-token ") == "new-token"


def test_every_hash_names_its_owner_and_unknown_tokens_name_nobody() -> None:
    hashes = TokenHashes([(sha("a1"), "A"), (sha("a2"), "A"), (sha("b"), "B")])
    assert (hashes.owner_of("a1"), hashes.owner_of("a2"), hashes.owner_of("b")) == ("A", "A", "B")
    assert hashes.owner_of("c") is None
    assert TokenHashes([]).owner_of("") is None


def test_every_hash_is_compared_in_constant_time_without_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    hashes = TokenHashes([(sha("first"), 1), (sha("second"), 2), (sha("third"), 3)])
    assert hashes.owner_of("first") == 1  # matches the very first stored hash
    assert len(calls) == 3  # ...and still every configured hash was compared
    assert all(b == token_hash("first").encode() for _, b in calls)  # the hash, never the token
