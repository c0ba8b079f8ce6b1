"""Per-table parsing: one function per TOML table, from its keys to its settings class.

Each function reads one table (or array of tables) with a TableReader, so its errors name
the key, and refuses its unknown keys; relative paths are resolved against `base`, the
config file's folder. Environment variables override only secrets and the broker URL
(`SWGW_BROKER_URL`, `SWGW_ADMIN_TOKEN_SHA256`, `SWGW_DEDUP_DSN`); they are read here and
nowhere else in the package. Whether tables agree with each other is gateway/settings/checks.py.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, ReceiptError
from gateway.receipts import SigningKey
from gateway.settings.hashes import checked_hashes, fingerprints, split_hashes, token_hashes
from gateway.settings.model import (
    AUTH_MODES,
    DEDUP_BACKENDS,
    DESTINATION_KINDS,
    Admin,
    BrokerSettings,
    Dedup,
    Destination,
    JournalSettings,
    Logging,
    MessageType,
    Partner,
    ReceiptSettings,
    Route,
    Secret,
    Server,
)
from gateway.settings.reader import TableReader, tables, unique

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_REPLICA_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def server(s: TableReader, base: Path) -> Server:
    result = Server(
        host=s.get("host", str, Server.host),
        port=s.get("port", int, Server.port),
        max_body_bytes=s.positive("max_body_bytes", int, Server.max_body_bytes),
        request_timeout_s=s.positive("request_timeout_s", float, Server.request_timeout_s),
        max_concurrency=s.positive("max_concurrency", int, Server.max_concurrency),
        idle_timeout_s=s.positive("idle_timeout_s", float, Server.idle_timeout_s),
        max_header_bytes=s.positive("max_header_bytes", int, Server.max_header_bytes),
        tls_cert=s.existing_file("tls_cert", base),
        tls_key=s.existing_file("tls_key", base),
        client_ca=s.existing_file("client_ca", base),
        client_cert=s.one_of("client_cert", ("optional", "required"), Server.client_cert),
    )
    s.done()
    return result


def broker_urls(b: TableReader, env: Mapping[str, str]) -> tuple[str, ...]:
    """`url`: one node URL or a list of them; env SWGW_BROKER_URL (comma-separated for several) overrides it."""
    b.used.add("url")
    value: Any = b.table.get("url", "amqp://guest:guest@127.0.0.1:5672/")
    if isinstance(value, str):
        urls: list[Any] = [value]
    elif isinstance(value, list) and value:
        urls = value
    else:
        raise b.error("url", f"expected a URL or a non-empty list of URLs (one per cluster node), got {value!r}")
    if env.get("SWGW_BROKER_URL"):
        urls = [u.strip() for u in env["SWGW_BROKER_URL"].split(",") if u.strip()]
    for i, url in enumerate(urls):
        where = "url" if len(urls) == 1 else f"url[{i}]"
        if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
            shown = url if isinstance(url, str) and "@" not in url else type(url).__name__
            raise b.error(where, f"must start with amqp:// or amqps:// (got {shown!r})")
    if len(set(urls)) != len(urls):
        raise b.error("url", "lists the same node twice")
    return tuple(urls)


def broker(b: TableReader, env: Mapping[str, str]) -> BrokerSettings:
    urls = broker_urls(b, env)
    group: int | None = b.get("quorum_initial_group_size", int, BrokerSettings.quorum_initial_group_size)
    if group is not None and group < 0:
        raise b.error("quorum_initial_group_size", f"must be >= 0 (0: every cluster node), got {group!r}")
    group = group or None  # 0: leave it to RabbitMQ, which uses every node
    replica = b.get("replica_id", str, "") or f"{socket.gethostname()}-{os.getpid()}"
    if not _REPLICA_RE.match(replica):
        raise b.error("replica_id", f"{replica!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    prefix = b.get("prefix", str, "swgw")
    if not _PREFIX_RE.match(prefix):
        raise b.error("prefix", f"{prefix!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    result = BrokerSettings(
        url=Secret(urls[0]),
        urls=tuple(Secret(u) for u in urls),
        quorum_initial_group_size=group,
        replica_id=replica,
        prefix=prefix,
        confirm_timeout_s=b.positive("confirm_timeout_s", float, BrokerSettings.confirm_timeout_s),
        connect_timeout_s=b.positive("connect_timeout_s", float, BrokerSettings.connect_timeout_s),
        reconnect_interval_s=b.positive("reconnect_interval_s", float, BrokerSettings.reconnect_interval_s),
        heartbeat_s=b.positive("heartbeat_s", int, BrokerSettings.heartbeat_s),
        retry_after_s=b.positive("retry_after_s", int, BrokerSettings.retry_after_s),
    )
    b.done()
    return result


def partners(doc: Mapping[str, Any], file: str, env: Mapping[str, str], base: Path) -> tuple[Partner, ...]:
    result = []
    for p in tables(doc, file, "partners"):
        partner = Partner(
            id=p.ident("id"),
            token_sha256=token_hashes(p, env, base),
            message_types=p.strings("message_types", ("*",)),
            receivers=p.strings("receivers", ("*",)),
            **rate_limit(p),
            auth=p.one_of("auth", AUTH_MODES, Partner.auth),
            cert_fingerprint_sha256=fingerprints(p, "cert_fingerprint_sha256"),
            cert_subject=p.strings("cert_subject", ()),
            signing_cert=p.existing_files("signing_cert", base),
        )
        p.done()
        result.append(partner)
    unique(file, "partners", [p.id for p in result])
    return tuple(result)


def message_types(doc: Mapping[str, Any], file: str, base: Path) -> tuple[MessageType, ...]:
    result = []
    for m in tables(doc, file, "message_types"):
        name = m.ident("name")
        schema = (base / m.get("schema", str, required=True)).resolve()
        if not schema.is_file():
            raise m.error("schema", f"schema file {schema} does not exist")
        result.append(MessageType(name=name, schema=schema, root=m.opt("root", str)))
        m.done()
    unique(file, "message_types", [t.name for t in result])
    return tuple(result)


def destinations(doc: Mapping[str, Any], file: str) -> tuple[Destination, ...]:
    result = []
    for d in tables(doc, file, "destinations"):
        kind = d.one_of("kind", DESTINATION_KINDS, "http")
        if kind == "inbox" and "url" in d.table:
            raise d.error("url", 'an inbox (kind = "inbox") has no url: its partner pulls with GET /v1/inbox')
        if kind == "http" and "partner" in d.table:
            raise d.error("partner", 'only an inbox (kind = "inbox") has a partner')
        dest = Destination(
            id=d.ident("id"),
            url=(d.url("url") or "") if kind == "http" else "",
            kind=kind,
            partner=d.ident("partner") if kind == "inbox" else None,
            lease_s=d.positive("lease_s", float, Destination.lease_s),
            unpolled_alert_s=d.positive("unpolled_alert_s", float, Destination.unpolled_alert_s),
            timeout_s=d.positive("timeout_s", float, Destination.timeout_s),
            concurrency=d.positive("concurrency", int, Destination.concurrency),
            max_attempts=d.positive("max_attempts", int, Destination.max_attempts),
            backoff_min_s=d.positive("backoff_min_s", float, Destination.backoff_min_s),
            backoff_max_s=d.positive("backoff_max_s", float, Destination.backoff_max_s),
            max_rate_per_s=d.positive("max_rate_per_s", float, Destination.max_rate_per_s),
            health_url=d.url("health_url", required=False),
            probe_interval_s=d.positive("probe_interval_s", float, Destination.probe_interval_s),
            failure_threshold=d.positive("failure_threshold", int, Destination.failure_threshold),
            slow_start_s=d.get("slow_start_s", float, Destination.slow_start_s),
            delivery_limit=d.positive("delivery_limit", int, Destination.delivery_limit),
            health_ok_statuses=d.statuses("health_ok_statuses"),
        )
        d.done()
        result.append(dest)
    unique(file, "destinations", [d.id for d in result])
    return tuple(result)


def routes(doc: Mapping[str, Any], file: str) -> tuple[Route, ...]:
    result = []
    for r in tables(doc, file, "routes"):
        result.append(
            Route(
                to=r.get("to", str, required=True),
                message_type=r.get("message_type", str, required=True),
                destination=r.get("destination", str, required=True),
            )
        )
        r.done()
    return tuple(result)


def rate_limit(p: TableReader) -> dict[str, Any]:
    """A partner's `rate_per_s` and `burst`: both None unless `rate_per_s` is set (opt-in, see Partner)."""
    rate = p.opt("rate_per_s", float)
    burst = p.opt("burst", int)
    if rate is not None and rate <= 0:
        raise p.error("rate_per_s", f"must be > 0, got {rate!r} (leave it out for no per-partner limit)")
    if burst is not None and burst <= 0:
        raise p.error("burst", f"must be > 0, got {burst!r}")
    if rate is None:
        if burst is not None:
            raise p.error("burst", "needs rate_per_s: without it the partner has no rate limit to burst above")
        return {"rate_per_s": None, "burst": None}
    return {"rate_per_s": float(rate), "burst": burst if burst is not None else max(1, math.ceil(2 * rate))}


def admin(a: TableReader, env: Mapping[str, str], base: Path) -> Admin:
    hashes = token_hashes(a, env, base)  # read always, so its keys count as used
    if env.get("SWGW_ADMIN_TOKEN_SHA256"):  # overrides the file's admin hashes
        hashes = tuple(checked_hashes(a, "token_sha256", split_hashes(env["SWGW_ADMIN_TOKEN_SHA256"])))
    result = Admin(
        token_sha256=hashes[0] if hashes else None,
        host=a.opt("host", str),
        port=a.opt("port", int),
        token_hashes=hashes,
    )
    a.done()
    return result


def logging(lg: TableReader) -> Logging:
    level = lg.get("level", str, "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise lg.error("level", f"{level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    fmt = lg.get("format", str, "json")
    if fmt not in {"json", "text"}:
        raise lg.error("format", f"{fmt!r} is not one of json, text")
    lg.done()
    return Logging(level=level, format=fmt)


def dedup(r: TableReader, env: Mapping[str, str], base: Path, broker_prefix: str) -> Dedup:
    """`[dedup]`; `table` defaults to `<broker.prefix>_dedup` with non [a-z0-9_] characters as `_`."""
    backend = r.get("backend", str, Dedup.backend)
    if backend not in DEDUP_BACKENDS:
        raise r.error("backend", f"{backend!r} is not one of {', '.join(DEDUP_BACKENDS)}")
    file_dsn = r.opt("dsn", str)
    dsn = env.get("SWGW_DEDUP_DSN") or file_dsn
    if dsn is not None and not dsn.startswith(("postgresql://", "postgres://")):
        raise r.error("dsn", "must start with postgresql:// (env SWGW_DEDUP_DSN overrides it)")
    if backend == "postgres" and dsn is None:
        raise r.error("dsn", 'is required when backend = "postgres" (or set SWGW_DEDUP_DSN)')
    derived = re.sub(r"[^a-z0-9_]", "_", broker_prefix.lower()) + "_dedup"
    table = r.get("table", str, derived)
    if not _TABLE_RE.match(table):
        raise r.error("table", f"{table!r} must be 1-63 chars of [a-z0-9_] starting with a letter or _; set it")
    result = Dedup(
        backend=backend,
        path=(base / r.get("path", str, str(Dedup.path))).resolve(),
        dsn=Secret(dsn) if dsn is not None else None,
        table=table,
        window_days=r.positive("window_days", float, Dedup.window_days),
        claim_timeout_s=r.positive("claim_timeout_s", float, Dedup.claim_timeout_s),
        late_confirm_wait_s=r.positive("late_confirm_wait_s", float, Dedup.late_confirm_wait_s),
        purge_interval_s=r.positive("purge_interval_s", float, Dedup.purge_interval_s),
        timeout_s=r.positive("timeout_s", float, Dedup.timeout_s),
        pool_size=r.positive("pool_size", int, Dedup.pool_size),
        on_store_error=r.one_of("on_store_error", ("reject", "accept"), Dedup.on_store_error),
    )
    r.done()
    return result


def journal(r: TableReader, dedup: Dedup) -> JournalSettings:
    """`[journal]`. It lives in the dedup store, so `[dedup] backend = "none"` turns it off
    (check-config says so); asking for it explicitly then is an error naming the key."""
    asked = r.opt("enabled", bool)
    if asked and dedup.backend == "none":
        raise r.error(
            "enabled",
            'the journal lives in the dedup store and [dedup] backend = "none" keeps none; '
            'set [dedup] backend = "sqlite" or "postgres", or journal.enabled = false',
        )
    result = JournalSettings(
        enabled=asked is not False and dedup.backend != "none",
        retention_days=r.positive("retention_days", float, JournalSettings.retention_days),
    )
    r.done()
    return result


def receipts(r: TableReader, base: Path) -> ReceiptSettings:
    """`[receipts] signing_keys`: each file is loaded here, so a bad one is a config error naming it."""
    names = r.strings("signing_keys", ())
    if not names:
        raise r.error("signing_keys", "list at least one PEM private key file (the first signs)")
    paths = tuple(base / name for name in names)
    kids: dict[str, int] = {}
    for i, path in enumerate(paths):
        try:
            kid = SigningKey.load(path).kid
        except ReceiptError as exc:
            raise ConfigError(r.file, f"{r.key('signing_keys')}[{i}]", str(exc)) from exc
        if kid in kids:
            raise ConfigError(
                r.file, f"{r.key('signing_keys')}[{i}]", f"{path} is the same key as signing_keys[{kids[kid]}]"
            )
        kids[kid] = i
    r.done()
    return ReceiptSettings(signing_keys=paths)
