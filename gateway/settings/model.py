"""The settings model: what a loaded config is, as frozen dataclasses with their defaults.

One class per TOML table (`[server]` → Server, `[[partners]]` → Partner, ...) and Settings
holding them all. Every other stage takes these as given: gateway/settings/load.py builds
them from the file, and nothing else builds or changes them at run time. Classes end in
`Settings` where a runtime class has the same idea (BrokerSettings vs the publishing
connection gateway.broker.publisher.Broker). The defaults here are the documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

AUTH_MODES = ("token", "mtls", "both")
"""How a partner proves who it is: bearer token, client certificate, or both at once."""

DEDUP_BACKENDS = ("sqlite", "postgres", "none")
"""Where seen MessageIds live; gateway/intake/dedup/policy.py says when to pick which."""

DESTINATION_KINDS = ("http", "inbox")
"""http: delivery POSTs to `url`; inbox: the partner pulls (gateway/inbox/)."""


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
    """HTTP listener for partners. `max_body_bytes` is refused before it is read.

    Partner security (SECURITY.md): `request_timeout_s` bounds reading one request body
    (408 after it). `idle_timeout_s` is how long a connection may take to deliver a complete
    request head after connecting or after its previous response: it closes idle keep-alives
    and slowloris headers. Keep it above the idle timeout of any load balancer in front (AWS
    ALB: 60 s), or the balancer may reuse a connection the gateway is closing and answer 502.
    `max_header_bytes` caps the request line (URL) and each header line (400/431 above it).
    TLS is on when `tls_cert`/`tls_key` are set; `client_ca` makes the server ask for client
    certificates signed by that CA, "optional" (token partners need none) or "required".
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 5_000_000
    request_timeout_s: float = 30.0
    max_concurrency: int = 512
    idle_timeout_s: float = 75.0
    max_header_bytes: int = 8190
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    client_cert: str = "optional"


@dataclass(frozen=True)
class BrokerSettings:
    """RabbitMQ connection (`[broker]`). `confirm_timeout_s` bounds how long a partner waits for a confirm.

    `url` is one node's URL or, for a cluster, a list of them (`urls` holds them all, `url`
    the first): each connection (publisher, delivery) takes the first node that answers and
    moves on to the next when its node goes (gateway/broker/nodes.py).
    `quorum_initial_group_size` is how many nodes get a replica of each quorum queue when it
    is first declared (`x-quorum-initial-group-size`; RabbitMQ uses every node there is when
    fewer); 0 in the file (None here) leaves it to RabbitMQ: every cluster node. It only applies at creation:
    an existing queue keeps its members (gateway/broker/topology.py).
    `replica_id` names this gateway process in consumer tags and the admin API; the default
    is `<hostname>-<pid>`.
    """

    url: Secret = field(default_factory=lambda: Secret("amqp://guest:guest@127.0.0.1:5672/"))
    urls: tuple[Secret, ...] = ()  # every node, `url` first; () means just `url`
    quorum_initial_group_size: int | None = 3
    replica_id: str = ""
    prefix: str = "swgw"
    confirm_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    reconnect_interval_s: float = 2.0
    heartbeat_s: int = 30
    retry_after_s: int = 5

    @property
    def nodes(self) -> tuple[Secret, ...]:
        """Every node URL to try, in order (one for a single broker)."""
        return self.urls or (self.url,)


@dataclass(frozen=True)
class Partner:
    """A sending party. `message_types`/`receivers` of ("*",) mean any.

    `auth` is one of AUTH_MODES: "token" (bearer token), "mtls" (client certificate only)
    or "both". A client certificate maps to this partner by its sha256 fingerprint
    (lowercase hex, no colons) or its subject (RFC 4514, as `openssl x509 -noout -subject
    -nameopt RFC2253` prints it). `signing_cert`: PEM certificates; when set, every message
    must carry an enveloped XML-DSig that verifies with one of them (several allow rotation).

    `rate_per_s`/`burst`: the partner's own rate limit, opt-in. None (the default) means no
    limit of its own: a partner re-sending its backlog after its own outage must not get 429
    for a burst it never asked to be limited in, and `[server] max_concurrency` already
    protects the gateway (503 beyond it). With `rate_per_s` set, `burst` defaults to two
    seconds of it.
    """

    id: str
    token_sha256: tuple[str, ...]
    message_types: tuple[str, ...] = ("*",)
    receivers: tuple[str, ...] = ("*",)
    rate_per_s: float | None = None
    burst: int | None = None
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
    # kind = "inbox": no HTTP backend; `partner` pulls its messages (GET /v1/inbox,
    # gateway/inbox/). `lease_s` is how long a pulled message waits for its ack before it is
    # offered again; `unpolled_alert_s` is how long the inbox may go without a poll while it
    # holds messages before SwgwInboxNotPolled fires (exported as a gauge for the alert).
    kind: str = "http"
    partner: str | None = None
    lease_s: float = 300.0
    unpolled_alert_s: float = 3600.0

    @property
    def is_inbox(self) -> bool:
        return self.kind == "inbox"

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
    # Check credentials with `gateway.operations.access.check_admin`, which accepts all of them.
    token_hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Logging:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True)
class Dedup:
    """The store of seen (sender, MessageId) pairs; gateway/intake/dedup/policy.py says why SQLite is the default.

    `backend` is one of DEDUP_BACKENDS. `path` (sqlite) is relative to the config file; `dsn`
    (postgres) is a Secret, env `SWGW_DEDUP_DSN` overrides it. `table` defaults to
    `<broker.prefix>_dedup` (non [a-z0-9_] characters become `_`), so gateways with their own
    prefix keep their own ids. `late_confirm_wait_s` bounds how long a publish whose confirm
    timed out is still awaited in the background to settle its claim; `claim_timeout_s` must
    exceed `broker.confirm_timeout_s + late_confirm_wait_s`. `timeout_s` bounds every store call.
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


@dataclass(frozen=True)
class JournalSettings:
    """The message journal (`[journal]`): every message's record and events (gateway/journal/).

    It lives in the dedup store (`[dedup] backend`, table and path), so `backend = "none"`
    leaves it off. `retention_days` (default 1825, five years: customs keeps records for
    years) is how long records and events are kept; `[dedup] window_days` only decides
    what counts as a duplicate. `enabled` is the effective state once the config is loaded.
    """

    enabled: bool = True
    retention_days: float = 1825.0


@dataclass(frozen=True)
class ReceiptSettings:
    """`[receipts]`: the PEM files of the keys that sign partners' receipts (gateway/receipts.py).

    `signing_keys` (resolved against the config file's folder): the first signs, every one
    is published at `GET /v1/receipt-keys` and verifies, so a key is rotated by putting the
    new one first and dropping the old one once no partner needs it. No `[receipts]` table:
    receipts are answered unsigned (check-config says so).
    """

    signing_keys: tuple[Path, ...]


@dataclass(frozen=True)
class Settings:
    """The whole config file; `path` is where it was read from (relative paths are resolved already)."""

    path: Path
    server: Server
    broker: BrokerSettings
    partners: tuple[Partner, ...]
    message_types: tuple[MessageType, ...]
    destinations: tuple[Destination, ...]
    routes: tuple[Route, ...]
    admin: Admin = Admin()
    logging: Logging = Logging()
    dedup: Dedup = Dedup()
    journal: JournalSettings = JournalSettings()
    receipts: ReceiptSettings | None = None  # None: receipts unsigned
