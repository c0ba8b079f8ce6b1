"""`swgw status`: one screen per destination for an operator who only has a terminal.

    $ SWGW_ADMIN_TOKEN=... swgw status --config gateway.toml
    DESTINATION  STATE   SINCE  BACKLOG  PARKED  DELIVERED/S  LAST SUCCESS
    vnaccs       OPEN    2h03m    1,000       0          0.0  2h04m ago
    ecoo         closed  3d04h        0       2         12.5  3s ago

It reads the admin API (`GET /admin/destinations`, admin bearer token) twice, `--interval`
seconds apart, and turns the growth of each worker's `delivered_total` into a delivery
rate; `--watch` keeps refreshing, reusing the previous sample. It needs no Prometheus,
which is the point: during an incident the monitoring may be what is broken.

Where to ask, like every subcommand, comes from `--config` ($SWGW_CONFIG, then
./gateway.toml): the admin listener (`[admin] host`/`port`, or the partner listener when the
admin API shares it; https when `[server]` has TLS; a wildcard host means this machine).
`--url` overrides it and then no config is read. The token itself cannot come from the
config, which holds only its sha256: it is read from `--admin-token-file` (a mounted secret)
or else the environment variable `--admin-token-env` (default SWGW_ADMIN_TOKEN), never from
an argument, so it shows in neither `ps` nor shell history. With a config, a token whose
hash the config does not accept is refused before any request.

What the numbers cover: backlog and parked are read from the broker, so they are the
whole system's. State, delivered/s and last success are the replica that answered (each
delivery worker has its own breaker); with several replicas, ask each one, or use the
dashboard, which aggregates them. `ACTIVE HERE` (when the gateway names its replica) says
whether this replica's consumer is the single active one, i.e. the replica delivering.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TextIO

import aiohttp

from gateway.credentials import token_hash
from gateway.errors import ConfigError, GatewayError
from gateway.settings.model import Settings
from gateway.timeutil import parse_iso_or_none

_CLEAR = "\033[H\033[2J"
_STATE_WORDS = {"closed": "closed", "open": "OPEN", "half_open": "half-open", "paused": "PAUSED"}


class StatusError(GatewayError):
    """The admin API could not be read; the message says what to check."""


@dataclass(frozen=True)
class Row:
    """One destination as the admin API reports it; None where the replica does not know.

    `rate_per_s` (messages delivered per second) is not in the API: `with_rates` fills it
    from two samples.
    """

    id: str
    state: str
    backlog: int | None = None
    parked: int | None = None
    inflight: int | None = None
    delivered_total: int | None = None
    last_delivery_at: datetime | None = None
    circuit_changed_at: datetime | None = None
    rate_per_s: float | None = None
    replica: str | None = None  # the replica that answered (several replicas: one per process)
    active: bool | None = None  # its consumer is the queue's single active one

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Row:
        return cls(
            id=str(item["id"]),
            state=str(item.get("state") or "unknown"),
            backlog=_int(item.get("backlog")),
            parked=_int(item.get("parked")),
            inflight=_int(item.get("inflight")),
            delivered_total=_int(item.get("delivered_total")),
            last_delivery_at=_time(item.get("last_delivery_at")),
            circuit_changed_at=_time(item.get("circuit_changed_at")),
            replica=item["replica"] if isinstance(item.get("replica"), str) else None,
            active=item["active"] if isinstance(item.get("active"), bool) else None,
        )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: object) -> datetime | None:
    parsed = parse_iso_or_none(value)
    return parsed if parsed is None or parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def fetch(url: str, token: str, *, timeout_s: float = 10.0) -> list[Row]:
    """GET <url>/admin/destinations with the admin token; one Row per destination."""
    endpoint = url.rstrip("/") + "/admin/destinations"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(endpoint, headers=headers) as resp,
        ):
            if resp.status == 401:
                raise StatusError(
                    f"{endpoint}: the admin token was rejected (401); check the token's environment variable"
                )
            if resp.status == 403:
                raise StatusError(
                    f"{endpoint}: the admin API is disabled (403); set [admin] token_sha256 in the config"
                )
            if resp.status == 404:
                raise StatusError(
                    f"{endpoint}: not found (404); with [admin] port set, --url must point at the admin listener"
                )
            if resp.status != 200:
                text = (await resp.text())[:200]
                raise StatusError(f"{endpoint}: HTTP {resp.status}: {text}")
            doc = await resp.json()
    except aiohttp.ClientConnectionError as exc:
        raise StatusError(f"cannot reach {endpoint}: {exc}; is `swgw serve` running there?") from exc
    except TimeoutError as exc:
        raise StatusError(f"{endpoint} did not answer within {timeout_s:g}s") from exc
    except aiohttp.ContentTypeError as exc:
        raise StatusError(f"{endpoint} did not answer JSON; is --url the gateway?") from exc
    items = doc.get("destinations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise StatusError(f"{endpoint}: unexpected answer, no 'destinations' list")
    return [Row.from_api(item) for item in items if isinstance(item, dict) and "id" in item]


def with_rates(before: Sequence[Row], after: Sequence[Row], elapsed_s: float) -> list[Row]:
    """`after` with `rate_per_s` from the growth of delivered_total over `elapsed_s`.

    No rate when a destination is new, a counter went backwards (the replica restarted
    between samples, or the load balancer sent the two requests to different replicas),
    or no time passed.
    """
    previous = {r.id: r.delivered_total for r in before}
    out = []
    for row in after:
        old, new = previous.get(row.id), row.delivered_total
        rate = None
        if old is not None and new is not None and new >= old and elapsed_s > 0:
            rate = (new - old) / elapsed_s
        out.append(replace(row, rate_per_s=rate))
    return out


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def render(rows: Sequence[Row], now: datetime, *, source: str | None = None) -> str:
    """The screen: a table, then one line per thing an operator should act on."""
    header: tuple[str, ...] = ("DESTINATION", "STATE", "SINCE", "BACKLOG", "PARKED", "DELIVERED/S", "LAST SUCCESS")
    replicas = sorted({r.replica for r in rows if r.replica})
    if replicas:  # a gateway that names its replica also says whether it is the one delivering
        header += ("ACTIVE HERE",)
    table: list[tuple[str, ...]] = [header]
    for r in sorted(rows, key=lambda r: r.id):
        since = _duration((now - r.circuit_changed_at).total_seconds()) if r.circuit_changed_at else "-"
        last = f"{_duration((now - r.last_delivery_at).total_seconds())} ago" if r.last_delivery_at else "never"
        rate = "-" if r.rate_per_s is None else f"{r.rate_per_s:.1f}"
        line: tuple[str, ...] = (
            r.id,
            _STATE_WORDS.get(r.state, r.state),
            since,
            _count(r.backlog),
            _count(r.parked),
            rate,
            last,
        )
        if replicas:
            line += ("?" if r.active is None else "yes" if r.active else "no",)
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {3, 4, 5}  # numbers
    lines = [
        f"swgw status at {now.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
        + (f" from {source}" if source else "")
        + (f" (replica {', '.join(replicas)})" if replicas else ""),
        "",
    ]
    for line in table:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(line)]
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no destinations configured)")
    notes = _attention(rows, now)
    lines.append("")
    lines.extend(notes or ["all destinations closed (delivering), nothing parked"])
    lines.append("")
    lines.append("backlog and parked: whole system (broker); state, rate, last success: this replica")
    if replicas:
        lines.append("active here: this replica's consumer is the one RabbitMQ sends to (no: standby, or idle queue)")
    return "\n".join(lines) + "\n"


def _attention(rows: Sequence[Row], now: datetime) -> list[str]:
    out = []
    for r in sorted(rows, key=lambda r: r.id):
        held = f"{_count(r.backlog)} message(s) held safely in RabbitMQ"
        since = f" for {_duration((now - r.circuit_changed_at).total_seconds())}" if r.circuit_changed_at else ""
        if r.state == "open":
            out.append(f"! {r.id}: backend down (circuit open{since}); {held}; resumes by itself once a probe succeeds")
        elif r.state == "half_open":
            out.append(f"! {r.id}: backend probe succeeded, trying one message before resuming; {held}")
        elif r.state == "paused":
            out.append(f"! {r.id}: paused by an operator; {held}; resume: POST /admin/destinations/{r.id}/resume")
        elif r.state == "closed" and r.backlog and r.rate_per_s:
            # A drain seen through --watch: how long until the backlog is gone at this rate. The
            # rate is this replica's, so with several replicas delivering it is an upper bound.
            left = _duration(r.backlog / r.rate_per_s)
            out.append(f"  {r.id}: draining {r.backlog:,} at {r.rate_per_s:,.1f}/s, about {left} left")
        if r.parked:
            out.append(
                f"! {r.id}: {r.parked:,} parked; inspect: swgw parked list --destination {r.id}; "
                f"after the fix: swgw replay --destination {r.id} --dry-run"
            )
    return out


async def run(
    url: str, token: str, *, interval_s: float, watch: bool, out: TextIO, max_screens: int | None = None
) -> None:
    """Print one screen (or keep refreshing with `watch`), each with rates over `interval_s`."""
    before = await fetch(url, token)
    taken = time.monotonic()
    screens = 0
    while True:
        if interval_s > 0:
            await asyncio.sleep(interval_s)  # the measuring window for the delivery rate
            after = await fetch(url, token)
            now_m = time.monotonic()
            rows = with_rates(before, after, now_m - taken)
            before, taken = after, now_m
        else:
            rows = before
        out.write((_CLEAR if watch else "") + render(rows, datetime.now(UTC), source=url))
        out.flush()
        screens += 1
        if not watch or (max_screens is not None and screens >= max_screens) or interval_s <= 0:
            return


_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def admin_url(settings: Settings) -> str:
    """The admin API's base URL as the config describes it, seen from this machine."""
    if settings.admin.port is not None:  # its own listener, on [admin] host or else [server] host
        host, port = settings.admin.host or settings.server.host, settings.admin.port
    else:  # the admin routes share the partner listener
        host, port = settings.server.host, settings.server.port
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    scheme = "https" if settings.server.tls_cert is not None else "http"  # both listeners share the TLS context
    return f"{scheme}://{host}:{port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` comes from the CLI's common parent, as for every subcommand."""
    parser.add_argument(
        "--url",
        default=None,
        help="admin API base URL; overrides the one the config describes (then no config is read)",
    )
    parser.add_argument(
        "--admin-token-env",
        default="SWGW_ADMIN_TOKEN",
        metavar="VAR",
        help="environment variable holding the admin token (default: SWGW_ADMIN_TOKEN); never pass it as an argument",
    )
    parser.add_argument(
        "--admin-token-file",
        default=None,
        metavar="FILE",
        help="file holding the admin token (e.g. a mounted secret); wins over --admin-token-env",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between the two samples the delivery rate is measured over (0: no rate)",
    )
    parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")


def _token(args: argparse.Namespace) -> str | None:
    if args.admin_token_file:
        try:
            with open(args.admin_token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as exc:
            raise StatusError(f"cannot read --admin-token-file {args.admin_token_file}: {exc.strerror}") from exc
    return os.environ.get(args.admin_token_env, "").strip() or None


def _url_from_config(config: str, token: str) -> str:
    from gateway.settings.load import load_settings  # only when no --url: reading a config costs a little

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise StatusError(f"{exc}; or give the admin API's address with --url") from exc
    if not settings.admin.token_hashes:
        raise StatusError(f"{settings.path}: the admin API is disabled; set [admin] token_sha256")
    if token_hash(token) not in settings.admin.token_hashes:
        raise StatusError(f"{settings.path}: [admin] token_sha256 does not accept this token; is it the admin token?")
    return admin_url(settings)


def main(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Entry point for `swgw status`. The token comes from a file or the environment so it
    never shows in `ps` or shell history; this is the command line's edge, where reading the
    environment belongs."""
    try:
        token = _token(args)
        if token is None:
            where = (
                f"put the admin token in {args.admin_token_file}"
                if args.admin_token_file
                else f"set {args.admin_token_env} to the admin token"
            )
            print(f"status: {where}", file=sys.stderr)
            return 2
        url = args.url or _url_from_config(getattr(args, "config", None) or "gateway.toml", token)
        asyncio.run(run(url, token, interval_s=args.interval, watch=args.watch, out=out or sys.stdout))
    except StatusError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    return 0
