"""Credentials as the config names them: sha256 token hashes and certificate fingerprints.

The config never holds a token, only its sha256, and the hashes may live outside the TOML
(an environment variable, a file such as `sha256sum` output), so secrets can be managed
apart from the config and several hashes at once let a token be rotated without downtime
(SECURITY.md). A value that is not a hash is refused without being printed: an operator
may have pasted the token itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from gateway.settings.reader import TableReader

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_HELP = "must be 64 lowercase hex chars: the sha256 of the token, never the token itself"


def checked_hashes(r: TableReader, name: str, values: list[str]) -> list[str]:
    """`values` if each is a sha256 hex digest; the error names `name` but not the value."""
    for v in values:
        if not _SHA256_RE.match(v):
            raise r.error(name, _HASH_HELP)
    return values


def split_hashes(text: str) -> list[str]:
    """Hashes in an environment variable: separated by commas or spaces."""
    return text.replace(",", " ").split()


def token_hashes(r: TableReader, env: Mapping[str, str], base: Path) -> tuple[str, ...]:
    """`token_sha256` (string or list), plus `token_sha256_env` (a variable holding hashes
    separated by commas or spaces) and `token_sha256_file` (one hash per line; `#` comments;
    `sha256sum` output works as is), without repeats, in that order.
    """
    hashes = list(r.strings("token_sha256", ()))
    for v in hashes:
        if not _SHA256_RE.match(v):
            raise r.error("token_sha256", "must be 64 lowercase hex chars (sha256 of the token)")
    var = r.opt("token_sha256_env", str)
    if var is not None:
        if var not in env:
            raise r.error("token_sha256_env", f"environment variable {var} is not set")
        hashes += checked_hashes(r, "token_sha256_env", split_hashes(env[var]))
    name = r.opt("token_sha256_file", str)
    if name is not None:
        file = (base / name).resolve()
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise r.error("token_sha256_file", f"cannot read {file}: {exc}") from exc
        lines = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        hashes += checked_hashes(r, "token_sha256_file", lines)
    return tuple(dict.fromkeys(hashes))


def fingerprints(r: TableReader, name: str) -> tuple[str, ...]:
    """Certificate sha256 fingerprints, normalised to lowercase hex without colons."""
    out = []
    for v in r.strings(name, ()):
        fp = v.replace(":", "").lower()  # accept openssl's AA:BB:... form too
        if not _SHA256_RE.match(fp):
            raise r.error(name, f"{v!r} is not a sha256 fingerprint (64 hex chars)")
        out.append(fp)
    return tuple(out)
