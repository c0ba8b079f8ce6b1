"""`swgw` command line: each subcommand is a thin call into the module that owns the work.

Every subcommand takes `--config FILE` (default: $SWGW_CONFIG, then ./gateway.toml).
Exit codes: 0 ok, 1 the checked thing failed (invalid message, bad config), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import logs, tls
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError, IngressError


def _config_default() -> str:
    return os.environ.get("SWGW_CONFIG", "gateway.toml")


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.app import create_app

    settings = _load(args)
    logs.setup(settings.logging)
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.server.request_timeout_s,
        ssl_context=tls.server_context(settings.server, config_file=str(settings.path)),  # None: plain HTTP
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.signature import SignatureVerifier
    from gateway.validation import Validator

    settings = _load(args)
    Validator.from_settings(settings)  # compiles every schema: a broken XSD fails here
    # Partner security (issue 6): TLS files and signing certificates load here too.
    tls.server_context(settings.server, config_file=str(settings.path))
    SignatureVerifier(settings.partners, config_file=str(settings.path))
    print(
        f"{settings.path}: ok ({len(settings.partners)} partners, {len(settings.message_types)} message types, "
        f"{len(settings.destinations)} destinations, {len(settings.routes)} routes)"
    )
    return 0


def _xml_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.xml")) if p.is_dir() else [p])
    return files


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway import rules
    from gateway.routing import Router
    from gateway.validation import Validator

    settings = _load(args)
    validator = Validator.from_settings(settings, rules=rules.check)
    router = Router(settings.routes)
    files = _xml_files(args.files)
    if not files:
        print("no XML files found", file=sys.stderr)
        return 1
    failed = 0
    for file in files:
        try:
            env = validator.check(file.read_bytes())
            dest = router.destination_for(env.receiver, env.message_type)
            if dest is None:
                raise IngressError(
                    f"No route for To={env.receiver!r} and MessageType={env.message_type!r}.",
                    reason="no_route",
                )
        except IngressError as exc:
            failed += 1
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": str(file),
                            "status": exc.status,
                            "reason": exc.reason,
                            "detail": exc.detail,
                            "errors": [p.as_dict() for p in exc.problems],
                        }
                    )
                )
            else:
                print(f"{file}: INVALID ({exc.status} {exc.reason}) {exc.detail}")
                for p in exc.problems[1:]:
                    print(f"    {p}")
        except OSError as exc:
            failed += 1
            print(f"{file}: cannot read: {exc}")
        else:
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": str(file),
                            "status": 202,
                            "message_id": env.message_id,
                            "message_type": env.message_type,
                            "destination": dest,
                        }
                    )
                )
            else:
                print(f"{file}: ok ({env.message_type} {env.message_id} -> {dest})")
    print(f"{len(files) - failed} valid, {failed} invalid", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swgw", description="Single-window message gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=_config_default(),
        help="TOML config file (default: $SWGW_CONFIG, then ./gateway.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the gateway")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", parents=[common], help="validate the config and compile every schema")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="run the ingress checks offline on files or folders of XML envelopes",
    )
    p.add_argument("files", nargs="+", help="XML files or folders (searched recursively for *.xml)")
    p.add_argument("--json", action="store_true", help="one JSON result per line")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
