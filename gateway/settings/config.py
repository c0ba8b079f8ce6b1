"""One TOML file → frozen dataclasses, validated once at start-up.

Every error names the file and the key (`destinations[1].timeout_s`), the value and what
was expected, so an operator can fix a config without reading code. Unknown keys are
errors too: a typo such as `timout_s` silently falling back to a default is how outages
get longer. Relative paths are resolved against the config file's folder. Environment
variables override only secrets and the broker URL (`SWGW_BROKER_URL`,
`SWGW_ADMIN_TOKEN_SHA256`, `SWGW_DEDUP_DSN`); nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

T = TypeVar("T")

# A worker holds a message while it retries it; stay well under RabbitMQ's consumer_timeout
# (1,800 s by default on 3.10 and 4.x), past which the broker closes the channel.
HOLD_BUDGET_S = 1500.0
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class Secret:
    """A string that never prints: reprs and str() show `'**********'`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Server:
    """HTTP listener for partners. `max_body_bytes` is refused before it is read."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 5_000_000
    request_timeout_s: float = 30.0
    max_concurrency: int = 512
    # -- partner security (issue 6); see SECURITY.md --
    # `request_timeout_s` bounds reading one request body (408 after it). `idle_timeout_s`
    # is how long a connection may take to deliver a complete request head after connecting
    # or after its previous response: it closes idle keep-alives and slowloris headers. Keep
    # it above the idle timeout of any load balancer in front (AWS ALB: 60 s), or the
    # balancer may reuse a connection the gateway is closing and answer 502.
    # `max_header_bytes` caps the request line (URL) and each header line (400/431 above it).
    # TLS is on when `tls_cert`/`tls_key` are set; `client_ca` makes the server ask for client
    # certificates signed by that CA, "optional" (token partners need none) or "required".
    idle_timeout_s: float = 75.0
    max_header_bytes: int = 8190
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    client_cert: str = "optional"


@dataclass(frozen=True)
class Broker:
    """RabbitMQ connection. `confirm_timeout_s` bounds how long a partner waits for a confirm."""

    url: Secret = field(default_factory=lambda: Secret("amqp://guest:guest@127.0.0.1:5672/"))
    prefix: str = "swgw"
    confirm_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    reconnect_interval_s: float = 2.0
    heartbeat_s: int = 30
    retry_after_s: int = 5


@dataclass(frozen=True)
class Partner:
    """A sending party. `message_types`/`receivers` of ("*",) mean any."""

    id: str
    token_sha256: tuple[str, ...]
    message_types: tuple[str, ...] = ("*",)
    receivers: tuple[str, ...] = ("*",)
    rate_per_s: float = 50.0
    burst: int = 100
    # -- partner security (issue 6) --
    # `auth`: "token" (bearer token), "mtls" (client certificate only) or "both". A client
    # certificate maps to this partner by its sha256 fingerprint (lowercase hex, no colons)
    # or its subject (RFC 4514, as `openssl x509 -noout -subject -nameopt RFC2253` prints it).
    # `signing_cert`: PEM certificates; when set, every message must carry an enveloped
    # XML-DSig that verifies with one of them (several allow rotation).
    auth: str = "token"
    cert_fingerprint_sha256: tuple[str, ...] = ()
    cert_subject: tuple[str, ...] = ()
    signing_cert: tuple[Path, ...] = ()

    def may_send(self, message_type: str) -> bool:
        return "*" in self.message_types or message_type in self.message_types

    def may_address(self, receiver: str) -> bool:
        return "*" in self.receivers or receiver in self.receivers


@dataclass(frozen=True)
class MessageType:
    """A payload type: its XSD's targetNamespace and global elements define valid payloads."""

    name: str
    schema: Path
    root: str | None = None  # local name of the payload root; None = any global element


@dataclass(frozen=True)
class Destination:
    """A backend and how to treat it during outages.

    Times are seconds. `max_attempts` counts POSTs made while the backend was judged up
    (circuit closed), across redeliveries; an open circuit holds the queue instead of
    burning attempts, and a failed half-open trial does not count. `delivery_limit` is the
    quorum queue's `x-delivery-limit`: the worker never requeues (it republishes with a
    confirm), so only a lost channel (crash, broker restart) spends a delivery.
    """

    id: str
    url: str
    timeout_s: float = 10.0
    concurrency: int = 8
    max_attempts: int = 8
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    max_rate_per_s: float = 200.0
    health_url: str | None = None
    probe_interval_s: float = 5.0
    failure_threshold: int = 5
    slow_start_s: float = 30.0
    delivery_limit: int = 1000
    # Statuses of `health_url` that count as "up"; empty means any 2xx. Anything else
    # (a 405 from a delivery URL, a load balancer's 404 page) keeps the circuit open.
    health_ok_statuses: tuple[int, ...] = ()

    def is_healthy_status(self, status: int) -> bool:
        if self.health_ok_statuses:
            return status in self.health_ok_statuses
        return 200 <= status <= 299


@dataclass(frozen=True)
class Route:
    to: str
    message_type: str
    destination: str


@dataclass(frozen=True)
class Admin:
    """Admin API credential (sha256 of the bearer token) and optional separate listener."""

    token_sha256: str | None = None
    host: str | None = None
    port: int | None = None
    # Every accepted admin hash (rotation: old and new at once); `token_sha256` is the first.
    # Check credentials with `gateway.intake.identity.check_admin`, which accepts all of them.
    token_hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Logging:
    level: str = "INFO"
    format: str = "json"


# --- dedup (gateway/intake/dedup/policy.py) -----------------------------------------------------------
DEDUP_BACKENDS = ("sqlite", "postgres", "none")


@dataclass(frozen=True)
class Dedup:
    """The store of seen (sender, MessageId) pairs; gateway/intake/dedup/policy.py says why SQLite is the default.

    `path` (sqlite) is relative to the config file; `dsn` (postgres) is a Secret, env
    `SWGW_DEDUP_DSN` overrides it. `table` defaults to `<broker.prefix>_dedup` (non
    [a-z0-9_] characters become `_`), so gateways with their own prefix keep their own ids.
    `late_confirm_wait_s` bounds how long a publish whose confirm timed out is still awaited
    in the background to settle its claim; `claim_timeout_s` must exceed
    `broker.confirm_timeout_s + late_confirm_wait_s`. `timeout_s` bounds every store call.
    """

    backend: str = "sqlite"
    path: Path = Path("swgw-dedup.sqlite3")
    dsn: Secret | None = None
    table: str = "swgw_dedup"
    window_days: float = 7.0
    claim_timeout_s: float = 60.0
    late_confirm_wait_s: float = 30.0
    purge_interval_s: float = 3600.0
    timeout_s: float = 2.0
    pool_size: int = 10
    on_store_error: str = "reject"


def _dedup(doc: Mapping[str, Any], file: str, base: Path, env: Mapping[str, str], broker: Broker) -> Dedup:
    r = _Reader(file, "dedup", doc.get("dedup", {}))
    backend = r.get("backend", str, Dedup.backend)
    if backend not in DEDUP_BACKENDS:
        raise ConfigError(file, "dedup.backend", f"{backend!r} is not one of {', '.join(DEDUP_BACKENDS)}")
    file_dsn = r.opt("dsn", str)
    dsn = env.get("SWGW_DEDUP_DSN") or file_dsn
    if dsn is not None and not dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(file, "dedup.dsn", "must start with postgresql:// (env SWGW_DEDUP_DSN overrides it)")
    if backend == "postgres" and dsn is None:
        raise ConfigError(file, "dedup.dsn", 'is required when backend = "postgres" (or set SWGW_DEDUP_DSN)')
    derived = re.sub(r"[^a-z0-9_]", "_", broker.prefix.lower()) + "_dedup"
    table = r.get("table", str, derived)
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", table):
        raise ConfigError(
            file, "dedup.table", f"{table!r} must be 1-63 chars of [a-z0-9_] starting with a letter or _; set it"
        )
    window_days = r.positive("window_days", float, Dedup.window_days)
    claim_timeout_s = r.positive("claim_timeout_s", float, Dedup.claim_timeout_s)
    late_confirm_wait_s = r.positive("late_confirm_wait_s", float, Dedup.late_confirm_wait_s)
    if claim_timeout_s <= broker.confirm_timeout_s + late_confirm_wait_s:
        raise ConfigError(
            file,
            "dedup.claim_timeout_s",
            f"{claim_timeout_s:g} must exceed broker.confirm_timeout_s + dedup.late_confirm_wait_s "
            f"({broker.confirm_timeout_s:g} + {late_confirm_wait_s:g}), or a publish whose confirm is still "
            "awaited could be taken over and queued twice; raise it or lower dedup.late_confirm_wait_s",
        )
    on_error = r.get("on_store_error", str, Dedup.on_store_error)
    if on_error not in ("reject", "accept"):
        raise ConfigError(file, "dedup.on_store_error", f"{on_error!r} is not one of reject, accept")
    dedup = Dedup(
        backend=backend,
        path=(base / r.get("path", str, str(Dedup.path))).resolve(),
        dsn=Secret(dsn) if dsn is not None else None,
        table=table,
        window_days=window_days,
        claim_timeout_s=claim_timeout_s,
        late_confirm_wait_s=late_confirm_wait_s,
        purge_interval_s=r.positive("purge_interval_s", float, Dedup.purge_interval_s),
        timeout_s=r.positive("timeout_s", float, Dedup.timeout_s),
        pool_size=r.positive("pool_size", int, Dedup.pool_size),
        on_store_error=on_error,
    )
    r.done()
    return dedup


# --- end dedup ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    path: Path
    server: Server
    broker: Broker
    partners: tuple[Partner, ...]
    message_types: tuple[MessageType, ...]
    destinations: tuple[Destination, ...]
    routes: tuple[Route, ...]
    admin: Admin = Admin()
    logging: Logging = Logging()
    dedup: Dedup = Dedup()

    def destination(self, dest_id: str) -> Destination:
        for d in self.destinations:
            if d.id == dest_id:
                return d
        raise KeyError(dest_id)


class _Reader:
    """Reads one TOML table, checking types and remembering which keys were used."""

    def __init__(self, file: str, where: str, table: Any) -> None:
        self.file, self.where = file, where
        if not isinstance(table, Mapping):
            raise ConfigError(file, where, f"must be a table, got {type(table).__name__}")
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self.used.add(name)
        if name not in self.table:
            if required or default is None:
                raise ConfigError(self.file, self.key(name), f"is required ({kind.__name__})")
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                self.file, self.key(name), f"expected {kind.__name__}, got {type(value).__name__} {value!r}"
            )
        return value

    def opt(self, name: str, kind: type[T]) -> T | None:
        if name not in self.table:
            self.used.add(name)
            return None
        return self.get(name, kind, required=True)

    def positive(self, name: str, kind: type[T], default: T) -> T:
        value = self.get(name, kind, default)
        if value <= 0:  # type: ignore[operator]
            raise ConfigError(self.file, self.key(name), f"must be > 0, got {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.file, self.key(name), f"expected a string or list of strings, got {value!r}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(self.file, self.key(unknown[0]), "unknown key (a typo?)")


def _statuses(r: _Reader, name: str) -> tuple[int, ...]:
    """A list of HTTP status codes (100-599); empty when absent."""
    r.used.add(name)
    value = r.table.get(name, [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value
    ):
        raise ConfigError(r.file, r.key(name), f"expected a list of HTTP status codes (100-599), got {value!r}")
    return tuple(value)


def _ident(r: _Reader, name: str) -> str:
    value = r.get(name, str, required=True)
    if not _ID_RE.match(value):
        raise ConfigError(r.file, r.key(name), f"{value!r} must be 1-64 chars of [A-Za-z0-9._:-]")
    return value


def _url(r: _Reader, name: str, *, required: bool = True) -> str | None:
    value = r.get(name, str, required=True) if required else r.opt(name, str)
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(r.file, r.key(name), f"{value!r} is not an http(s) URL")
    return value


def _hashes(r: _Reader, name: str) -> tuple[str, ...]:
    values = r.strings(name, ())
    for v in values:
        if not _SHA256_RE.match(v):
            raise ConfigError(r.file, r.key(name), "must be 64 lowercase hex chars (sha256 of the token)")
    return values


def _tables(doc: Mapping[str, Any], file: str, name: str) -> list[_Reader]:
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise ConfigError(file, name, "must be an array of tables ([[" + name + "]])")
    return [_Reader(file, f"{name}[{i}]", t) for i, t in enumerate(items)]


def _unique(file: str, name: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i, v in enumerate(ids):
        if v in seen:
            raise ConfigError(file, f"{name}[{i}].id", f"duplicate id {v!r}")
        seen.add(v)


# -- partner security (issue 6): secrets from env vars or files, TLS files, mTLS identities --

AUTH_MODES = ("token", "mtls", "both")
_HASH_HELP = "must be 64 lowercase hex chars: the sha256 of the token, never the token itself"


def _checked_hashes(r: _Reader, name: str, values: list[str]) -> list[str]:
    # The offending value is not printed: an operator may have pasted a token instead of its hash.
    for v in values:
        if not _SHA256_RE.match(v):
            raise ConfigError(r.file, r.key(name), _HASH_HELP)
    return values


def _token_hashes(r: _Reader, env: Mapping[str, str], base: Path) -> tuple[str, ...]:
    """`token_sha256` (string or list), plus `token_sha256_env` (a variable holding hashes
    separated by commas or spaces) and `token_sha256_file` (one hash per line; `#` comments;
    `sha256sum` output works as is). Secrets can so live outside the TOML, and several
    hashes at once let a token be rotated without downtime.
    """
    hashes = list(_hashes(r, "token_sha256"))
    var = r.opt("token_sha256_env", str)
    if var is not None:
        if var not in env:
            raise ConfigError(r.file, r.key("token_sha256_env"), f"environment variable {var} is not set")
        hashes += _checked_hashes(r, "token_sha256_env", env[var].replace(",", " ").split())
    name = r.opt("token_sha256_file", str)
    if name is not None:
        file = (base / name).resolve()
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(r.file, r.key("token_sha256_file"), f"cannot read {file}: {exc}") from exc
        lines = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        hashes += _checked_hashes(r, "token_sha256_file", lines)
    return tuple(dict.fromkeys(hashes))


def _file(r: _Reader, name: str, base: Path) -> Path | None:
    value = r.opt(name, str)
    if value is None:
        return None
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(r.file, r.key(name), f"file {path} does not exist")
    return path


def _files(r: _Reader, name: str, base: Path) -> tuple[Path, ...]:
    paths = tuple((base / v).resolve() for v in r.strings(name, ()))
    for path in paths:
        if not path.is_file():
            raise ConfigError(r.file, r.key(name), f"file {path} does not exist")
    return paths


def _fingerprints(r: _Reader, name: str) -> tuple[str, ...]:
    out = []
    for v in r.strings(name, ()):
        fp = v.replace(":", "").lower()  # accept openssl's AA:BB:... form too
        if not _SHA256_RE.match(fp):
            raise ConfigError(r.file, r.key(name), f"{v!r} is not a sha256 fingerprint (64 hex chars)")
        out.append(fp)
    return tuple(out)


def _one_of(r: _Reader, name: str, choices: tuple[str, ...], default: str) -> str:
    value = r.get(name, str, default)
    if value not in choices:
        raise ConfigError(r.file, r.key(name), f"{value!r} is not one of {', '.join(choices)}")
    return value


def _check_security(file: str, server: Server, partners: list[Partner], admin: Admin) -> None:
    """Cross-checks that no single table can make: each would otherwise fail open or be ambiguous."""
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError(file, "server.tls_cert", "tls_cert and tls_key must be set together")
    if server.client_ca is not None and server.tls_cert is None:
        raise ConfigError(file, "server.client_ca", "client certificates need TLS: set tls_cert and tls_key")
    owner: dict[str, str] = {}
    for i, p in enumerate(partners):
        where = f"partners[{i}]"
        if p.auth != "mtls" and not p.token_sha256:
            raise ConfigError(file, f"{where}.token_sha256", f"auth = {p.auth!r} needs at least one token hash")
        if p.auth == "mtls" and p.token_sha256:
            raise ConfigError(file, f"{where}.token_sha256", 'auth = "mtls" takes no token; use auth = "both"')
        if p.auth != "token":
            if server.client_ca is None:
                raise ConfigError(file, f"{where}.auth", f"auth = {p.auth!r} needs [server] client_ca")
            if not (p.cert_fingerprint_sha256 or p.cert_subject):
                raise ConfigError(
                    file, f"{where}.auth", f"auth = {p.auth!r} needs cert_fingerprint_sha256 or cert_subject"
                )
        # One token, fingerprint or subject naming two partners would let one act as the other.
        for kind, values in (
            ("token_sha256", p.token_sha256),
            ("cert_fingerprint_sha256", p.cert_fingerprint_sha256),
            ("cert_subject", p.cert_subject),
        ):
            for v in values:
                other = owner.setdefault(f"{kind}:{v}", p.id)
                if other != p.id:
                    raise ConfigError(file, f"{where}.{kind}", f"also configured for partner {other!r}")
    for h in admin.token_hashes:
        if f"token_sha256:{h}" in owner:
            raise ConfigError(file, "admin.token_sha256", "the admin token must not also be a partner token")


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate `path`. `env` defaults to os.environ (only overrides are read)."""
    env = os.environ if env is None else env
    path = Path(path).resolve()
    file = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "(file)", "not found; pass --config FILE or set SWGW_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "(syntax)", str(exc)) from exc
    base = path.parent
    root = _Reader(file, "", doc)

    s = _Reader(file, "server", doc.get("server", {}))
    root.used.add("server")
    server = Server(
        host=s.get("host", str, Server.host),
        port=s.get("port", int, Server.port),
        max_body_bytes=s.positive("max_body_bytes", int, Server.max_body_bytes),
        request_timeout_s=s.positive("request_timeout_s", float, Server.request_timeout_s),
        max_concurrency=s.positive("max_concurrency", int, Server.max_concurrency),
        idle_timeout_s=s.positive("idle_timeout_s", float, Server.idle_timeout_s),
        max_header_bytes=s.positive("max_header_bytes", int, Server.max_header_bytes),
        tls_cert=_file(s, "tls_cert", base),
        tls_key=_file(s, "tls_key", base),
        client_ca=_file(s, "client_ca", base),
        client_cert=_one_of(s, "client_cert", ("optional", "required"), Server.client_cert),
    )
    s.done()

    b = _Reader(file, "broker", doc.get("broker", {}))
    root.used.add("broker")
    file_url = b.get("url", str, "amqp://guest:guest@127.0.0.1:5672/")  # read always: marks the key used
    url = env.get("SWGW_BROKER_URL") or file_url
    if not url.startswith(("amqp://", "amqps://")):
        raise ConfigError(file, "broker.url", "must start with amqp:// or amqps://")
    prefix = b.get("prefix", str, "swgw")
    if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", prefix):
        raise ConfigError(file, "broker.prefix", f"{prefix!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    broker = Broker(
        url=Secret(url),
        prefix=prefix,
        confirm_timeout_s=b.positive("confirm_timeout_s", float, Broker.confirm_timeout_s),
        connect_timeout_s=b.positive("connect_timeout_s", float, Broker.connect_timeout_s),
        reconnect_interval_s=b.positive("reconnect_interval_s", float, Broker.reconnect_interval_s),
        heartbeat_s=b.positive("heartbeat_s", int, Broker.heartbeat_s),
        retry_after_s=b.positive("retry_after_s", int, Broker.retry_after_s),
    )
    b.done()

    partners = []
    root.used.add("partners")
    for p in _tables(doc, file, "partners"):
        partner = Partner(
            id=_ident(p, "id"),
            token_sha256=_token_hashes(p, env, base),
            message_types=p.strings("message_types", ("*",)),
            receivers=p.strings("receivers", ("*",)),
            rate_per_s=p.positive("rate_per_s", float, Partner.rate_per_s),
            burst=p.positive("burst", int, Partner.burst),
            auth=_one_of(p, "auth", AUTH_MODES, Partner.auth),
            cert_fingerprint_sha256=_fingerprints(p, "cert_fingerprint_sha256"),
            cert_subject=p.strings("cert_subject", ()),
            signing_cert=_files(p, "signing_cert", base),
        )
        p.done()
        partners.append(partner)
    _unique(file, "partners", [p.id for p in partners])

    types = []
    root.used.add("message_types")
    for m in _tables(doc, file, "message_types"):
        name = _ident(m, "name")
        schema = (base / m.get("schema", str, required=True)).resolve()
        if not schema.is_file():
            raise ConfigError(file, m.key("schema"), f"schema file {schema} does not exist")
        types.append(MessageType(name=name, schema=schema, root=m.opt("root", str)))
        m.done()
    _unique(file, "message_types", [t.name for t in types])

    dests = []
    root.used.add("destinations")
    for d in _tables(doc, file, "destinations"):
        dest = Destination(
            id=_ident(d, "id"),
            url=_url(d, "url") or "",
            timeout_s=d.positive("timeout_s", float, Destination.timeout_s),
            concurrency=d.positive("concurrency", int, Destination.concurrency),
            max_attempts=d.positive("max_attempts", int, Destination.max_attempts),
            backoff_min_s=d.positive("backoff_min_s", float, Destination.backoff_min_s),
            backoff_max_s=d.positive("backoff_max_s", float, Destination.backoff_max_s),
            max_rate_per_s=d.positive("max_rate_per_s", float, Destination.max_rate_per_s),
            health_url=_url(d, "health_url", required=False),
            probe_interval_s=d.positive("probe_interval_s", float, Destination.probe_interval_s),
            failure_threshold=d.positive("failure_threshold", int, Destination.failure_threshold),
            slow_start_s=d.get("slow_start_s", float, Destination.slow_start_s),
            delivery_limit=d.positive("delivery_limit", int, Destination.delivery_limit),
            health_ok_statuses=_statuses(d, "health_ok_statuses"),
        )
        if dest.backoff_min_s > dest.backoff_max_s:
            raise ConfigError(file, d.key("backoff_min_s"), "must not exceed backoff_max_s")
        hold_s = dest.max_attempts * (dest.timeout_s + dest.backoff_max_s)
        if hold_s > HOLD_BUDGET_S:
            raise ConfigError(
                file,
                d.key("max_attempts"),
                f"a worker could hold one message for {hold_s:.0f}s (max_attempts x (timeout_s + backoff_max_s)), "
                f"over {HOLD_BUDGET_S:.0f}s: RabbitMQ's consumer_timeout (30 min by default) would close the "
                "channel and count a redelivery. Lower max_attempts, timeout_s or backoff_max_s; a long outage "
                "is the circuit breaker's job, not the retry loop's.",
            )
        d.done()
        dests.append(dest)
    _unique(file, "destinations", [d.id for d in dests])

    routes = []
    root.used.add("routes")
    dest_ids = {d.id for d in dests}
    type_names = {t.name for t in types}
    for r in _tables(doc, file, "routes"):
        route = Route(
            to=r.get("to", str, required=True),
            message_type=r.get("message_type", str, required=True),
            destination=r.get("destination", str, required=True),
        )
        if route.destination not in dest_ids:
            raise ConfigError(file, r.key("destination"), f"unknown destination {route.destination!r}")
        if route.message_type != "*" and route.message_type not in type_names:
            raise ConfigError(file, r.key("message_type"), f"unknown message type {route.message_type!r}")
        r.done()
        routes.append(route)

    a = _Reader(file, "admin", doc.get("admin", {}))
    root.used.add("admin")
    admin_hashes = _token_hashes(a, env, base)  # read always, so its keys count as used
    if env.get("SWGW_ADMIN_TOKEN_SHA256"):  # overrides the file's admin hashes
        admin_hashes = tuple(
            _checked_hashes(a, "token_sha256", env["SWGW_ADMIN_TOKEN_SHA256"].replace(",", " ").split())
        )
    admin = Admin(
        token_sha256=admin_hashes[0] if admin_hashes else None,
        host=a.opt("host", str),
        port=a.opt("port", int),
        token_hashes=admin_hashes,
    )
    a.done()
    _check_security(file, server, partners, admin)

    lg = _Reader(file, "logging", doc.get("logging", {}))
    root.used.add("logging")
    level = lg.get("level", str, "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(file, "logging.level", f"{level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    fmt = lg.get("format", str, "json")
    if fmt not in {"json", "text"}:
        raise ConfigError(file, "logging.format", f"{fmt!r} is not one of json, text")
    lg.done()
    root.used.add("dedup")
    dedup = _dedup(doc, file, base, env, broker)
    root.done()

    return Settings(
        path=path,
        server=server,
        broker=broker,
        partners=tuple(partners),
        message_types=tuple(types),
        destinations=tuple(dests),
        routes=tuple(routes),
        admin=admin,
        logging=Logging(level=level, format=fmt),
        dedup=dedup,
    )
