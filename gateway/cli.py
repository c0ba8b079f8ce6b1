"""`swgw` command line: each subcommand is a thin call into the module that owns the work.

Every subcommand takes `--config FILE` (default: $SWGW_CONFIG, then ./gateway.toml; for `swgw demo`
the demo config shipped in the package).
Exit codes: 0 ok, 1 the checked thing failed (invalid message, bad config), 2 usage;
`swgw replay` adds 3 (refused: another replay of the destination is running) and 4
(stopped at its time limit; run it again to continue); `swgw reconcile` exits 1 when the
gateway's and the backend's ids differ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, GatewayError, IngressError
from gateway.intake import tls
from gateway.observability import logs
from gateway.progress import Progress
from gateway.settings.load import load_settings
from gateway.settings.model import Settings

if TYPE_CHECKING:
    from gateway.journal.model import JournalWriter
    from gateway.operations.replay import ReplayFilter

EXIT_REPLAY_REFUSED = 3  # another replay of the destination holds the lock; nothing was read
EXIT_REPLAY_TIME_LIMIT = 4  # stopped at --timeout-s: confirmed ones are replayed, the rest stays parked


def _config_default() -> str:
    return os.environ.get("SWGW_CONFIG", "gateway.toml")


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.runtime.serve import serve

    settings = _load(args)
    logs.setup(settings.logging)
    return serve(settings, role=args.role, workers=args.workers)


def _replay_filter(args: argparse.Namespace) -> ReplayFilter:
    from gateway.operations.replay import ReplayFilter, parse_time

    return ReplayFilter(
        since=parse_time(args.since),
        until=parse_time(args.until),
        message_type=args.type,
        sender=args.sender,
        message_id=args.message_id,
        limit=args.limit,
    )


def cmd_parked_list(args: argparse.Namespace) -> int:
    from gateway.operations import replay

    settings = _load(args)

    async def work() -> int:
        rows = await replay.browse(settings, args.destination, _replay_filter(args))
        if args.json:
            for r in rows:
                print(json.dumps(asdict(r)))
        else:
            print(f"{'MESSAGE ID':<34} {'TYPE':<9} {'FROM':<16} {'REASON':<14} {'STATUS':<6} PARKED AT")
            for r in rows:
                print(
                    f"{r.message_id:<34} {r.message_type:<9} {r.sender:<16} {r.reason:<14} "
                    f"{r.status if r.status is not None else '-':<6} {r.parked_at}"
                )
            print(f"{len(rows)} parked message(s) shown for {args.destination}", file=sys.stderr)
        return 0

    from gateway.runtime.serve import use_uvloop

    use_uvloop()
    return asyncio.run(work())


@contextlib.asynccontextmanager
async def _journal_writer(settings: Settings) -> AsyncIterator[JournalWriter | None]:
    """The journal writer of a command that journals (replay), on the gateway's own store
    (same SQLite file or PostgreSQL table), with no retention task; None when the journal is off."""
    from prometheus_client import CollectorRegistry

    from gateway.journal.service import make_store
    from gateway.journal.writer import BatchWriter
    from gateway.observability.metrics import Metrics

    store = make_store(settings.dedup, settings.journal) if settings.journal.enabled else None
    if store is None:
        yield None
        return
    await store.start()
    writer = BatchWriter(store, Metrics(CollectorRegistry()))
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()  # flushes
        await store.close()


def _operator() -> str:
    """Who runs this command, for the journal; `unknown` in a container without a user name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_replay(args: argparse.Namespace) -> int:
    from gateway.errors import ReplayInProgress
    from gateway.operations import replay

    settings = _load(args)
    flt = _replay_filter(args)

    async def work() -> int:
        shown = Progress(f"replay {args.destination}: parked messages read")  # count, rate, time left on a TTY
        try:
            async with _journal_writer(settings) as journal:
                report = await replay.replay(
                    settings,
                    args.destination,
                    flt,
                    rate_per_s=args.rate,
                    dry_run=args.dry_run,
                    timeout_s=args.timeout_s,
                    journal=journal,
                    action=f"cli: swgw replay (user {_operator()})",
                    progress=shown.update,
                )
        except ReplayInProgress as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REPLAY_REFUSED
        finally:
            shown.close()
        verb = "would replay" if report.dry_run else "replayed"
        for r in report.selected[:50]:
            print(f"{verb}: {r.message_id} {r.message_type} from {r.sender} (parked {r.parked_at}: {r.reason})")
        if len(report.selected) > 50:
            print(f"... and {len(report.selected) - 50} more")
        print(
            f"{args.destination}: {verb} {report.replayed if not report.dry_run else len(report.selected)} "
            f"of {report.present} parked, left parked {report.present - report.replayed}, failed {report.failed}"
        )
        if report.timed_out:
            print(
                f"{args.destination}: stopped at the time limit ({report.timeout_s:g}s) with {report.unread} not "
                "yet read; what was confirmed is replayed, the rest stays parked. Run the replay again to continue.",
                file=sys.stderr,
            )
            return EXIT_REPLAY_TIME_LIMIT
        return 1 if report.failed else 0

    from gateway.runtime.serve import use_uvloop

    use_uvloop()
    return asyncio.run(work())


def _timeout_s(value: str) -> float:
    from gateway.operations.replay import check_timeout

    try:
        return check_timeout(float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_schema_docs(args: argparse.Namespace) -> int:
    from gateway.tools import schemadoc

    return schemadoc.main(["--check"] if args.check else [])


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.tools import demo

    settings = load_settings(args.config or demo.DEMO_CONFIG)
    return demo.run(settings, keep_running=args.keep_running)  # it sends the logs to a file it names


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.tools import simulate

    return simulate.run(args)


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.intake.signature import SignatureVerifier
    from gateway.intake.validation import Validator
    from gateway.journal import service as journal_service

    settings = _load(args)
    Validator.from_settings(settings)  # compiles every schema: a broken XSD fails here
    # Partner security: TLS files and signing certificates load here too.
    tls.server_context(settings.server, config_file=str(settings.path))
    SignatureVerifier(settings.partners, config_file=str(settings.path))
    print(
        f"{settings.path}: ok ({len(settings.partners)} partners, {len(settings.message_types)} message types, "
        f"{len(settings.destinations)} destinations, {len(settings.routes)} routes)"
    )
    print(journal_service.describe(settings))  # on or off, where, how long; off says why
    from gateway.tools import receipts

    print(receipts.describe(settings))  # signed with which key, or unsigned
    return 0


def _xml_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.xml")) if p.is_dir() else [p])
    return files


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.intake import rules
    from gateway.intake.routing import Router
    from gateway.intake.validation import Validator

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
            dest = router.route(env.receiver, env.message_type)
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
    p.add_argument(
        "--role",
        choices=("all", "ingress", "delivery"),
        default="all",
        help="all (default): intake and delivery; ingress: intake only; delivery: workers only",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT; default 1); delivery and admin run in the first only",
    )
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

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--destination", required=True, help="destination id")
    filters.add_argument("--since", help="parked at or after (ISO 8601 with offset)")
    filters.add_argument("--until", help="parked at or before (ISO 8601 with offset)")
    filters.add_argument("--type", help="message type")
    filters.add_argument("--from", dest="sender", help="sending partner id")
    filters.add_argument("--message-id", help="one message id")
    filters.add_argument("--limit", type=int, help="at most this many")

    parked = sub.add_parser("parked", help="parked messages").add_subparsers(dest="parked_cmd", required=True)
    p = parked.add_parser("list", parents=[common, filters], help="list parked messages without consuming them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_parked_list)

    p = sub.add_parser(
        "replay",
        parents=[common, filters],
        help="move parked messages back to their destination queue (try --dry-run first)",
        description="Move parked messages back to their destination queue. One replay per destination runs "
        "at a time, across every process; a second one is refused at once.",
        epilog="exit codes: 0 done; 1 failed (broker unreachable, a publish not confirmed: what was not "
        f"confirmed stays parked); 2 usage; {EXIT_REPLAY_REFUSED} refused, another replay of this destination "
        f"is running (nothing read); {EXIT_REPLAY_TIME_LIMIT} stopped at --timeout-s (what was confirmed is "
        "replayed, the rest stays parked: run it again)",
    )
    p.add_argument("--rate", type=float, help="messages per second (default: as fast as confirms allow)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be replayed")
    p.add_argument(
        "--timeout-s",
        type=_timeout_s,
        default=600.0,
        help="stop after this many seconds (default 600, at most 1500: RabbitMQ's consumer_timeout is 30 min)",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("schema-docs", help="regenerate schemas/README.md from the XSDs (--check: verify only)")
    p.add_argument("--check", action="store_true", help="exit 1 if schemas/README.md is out of date")
    p.set_defaults(func=cmd_schema_docs)

    p = sub.add_parser("demo", help="run the gateway with simulators and narrate the whole flow")
    p.add_argument("--config", help="TOML config (default: the demo config shipped with swgw, ops/gateway.toml)")
    p.add_argument("--keep-running", action="store_true", help="leave gateway and simulators up afterwards")
    p.set_defaults(func=cmd_demo)

    from gateway.tools import simulate

    p = sub.add_parser("simulate", help="run the backend simulator (drills, demo, tests)")
    simulate.add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    from gateway.tools import status

    p = sub.add_parser(
        "status",
        parents=[common],
        help="one screen per destination: state, backlog, parked, delivery rate, last success",
    )
    status.add_arguments(p)
    p.set_defaults(func=status.main)

    from gateway.operations import messages, reconcile, report  # the journal's read side for ops

    messages.add_commands(sub, common)
    report.add_command(sub, common)
    reconcile.add_command(sub, common)
    from gateway.tools import inbox_client

    inbox_client.add_command(sub, common)  # swgw inbox pull
    from gateway.tools import receipts

    receipts.add_command(sub, common)  # swgw verify-receipt
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    except (GatewayError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
