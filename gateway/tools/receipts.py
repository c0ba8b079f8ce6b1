"""`swgw verify-receipt`: check a signed receipt offline, and check-config's line about receipts.

    swgw verify-receipt RECEIPT [--body FILE] [--keys URL_OR_FILE | --config FILE]

RECEIPT is the compact JWS (the 202's `receipt` field or `Swgw-Receipt` header), or a file
holding it. The keys are a JWKS: a file, or the gateway's `GET /v1/receipt-keys` URL
(`--keys`), or else the keys of the gateway's own config (`--config`, default as for every
command). With `--body`, the file's SHA-256 must be the receipt's `body_sha256`.

Exit codes: 0 valid (the payload is printed as JSON); 1 invalid (the reason on stderr:
malformed, signed by a key not published, bad signature, another body); 2 usage (bad
arguments, a file or URL that cannot be read, a config without `[receipts]`).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from gateway.errors import ReceiptError
from gateway.receipts import KeyRing, verify
from gateway.settings.load import load_settings
from gateway.settings.model import Settings

EXIT_VALID, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


def describe(settings: Settings) -> str:
    """check-config's line: who signs receipts, or that they are unsigned."""
    if settings.receipts is None:
        return "receipts: unsigned (no [receipts] table; add signing_keys to sign every 202 and 200)"
    ring = KeyRing.load(settings.receipts.signing_keys)
    others = ", ".join(k.kid for k in ring.keys[1:]) or "none"
    return (
        f"receipts: signed with {ring.signer.alg} key {ring.signer.kid} ({ring.signer.path.name}); "
        f"also verifying: {others}; published at GET /v1/receipt-keys"
    )


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify-receipt",
        parents=[common],
        help="verify a signed receipt offline against the published keys (and the body)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="exit codes: 0 valid; 1 invalid (the reason on stderr); 2 usage",
    )
    p.add_argument("receipt", help="the compact JWS, or a file holding it")
    p.add_argument("--body", help="the file that was sent: its SHA-256 must match the receipt")
    p.add_argument("--keys", help="a JWKS file or URL (GET /v1/receipt-keys); default: the keys of --config")
    p.set_defaults(func=main)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _Usage(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _jwks(args: argparse.Namespace) -> dict[str, Any]:
    if args.keys is None:
        settings = load_settings(args.config)
        if settings.receipts is None:
            raise _Usage(f"{settings.path} has no [receipts] table: its gateway signs no receipts; give --keys")
        return KeyRing.load(settings.receipts.signing_keys).jwks()
    if args.keys.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(args.keys, timeout=10) as resp:  # http(s) only, checked above
                raw: bytes = resp.read()
        except OSError as exc:
            raise _Usage(f"cannot fetch {args.keys}: {exc}") from exc
    else:
        raw = _read(args.keys, "the key set")
    try:
        keys: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise _Usage(f"{args.keys} is not a JWKS (JSON): {exc}") from exc
    return keys


def main(args: argparse.Namespace) -> int:
    try:
        token = args.receipt.strip()
        if token.count(".") != 2:  # a JWS has exactly two dots; anything else is a file name
            token = _read(token, "the receipt").decode("utf-8", "replace").strip()
        body = _read(args.body, "the body") if args.body else None
        jwks = _jwks(args)
    except _Usage as exc:
        print(f"usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        claims = verify(token, jwks, body=body)
    except ReceiptError as exc:
        print(f"invalid receipt: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(claims, indent=2, sort_keys=True))
    checked = "signature and body" if body is not None else "signature (give --body to check the body too)"
    print(f"valid receipt: {checked}", file=sys.stderr)
    return EXIT_VALID
