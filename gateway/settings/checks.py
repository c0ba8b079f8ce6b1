"""Checks no single key can make: values that must agree across keys and tables.

Each table is read on its own (gateway/settings/tables.py); these run once the tables they
compare are read, and each refuses a config that would otherwise fail open, be ambiguous
or break at run time in a way the operator could not trace back to the config: a route to
an unknown destination, a token that names two partners, a claim that could be taken over
while its publish is still awaited, a journal record deleted inside the dedup window, a
retry loop that outlasts RabbitMQ's patience.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import ConfigError
from gateway.settings.model import (
    Admin,
    BrokerSettings,
    Dedup,
    Destination,
    JournalSettings,
    MessageType,
    Partner,
    Route,
    Server,
)

HOLD_BUDGET_S = 1500.0
"""The longest a worker may hold one message while it retries it (seconds).

A worker holds a message while it retries it, up to `max_attempts x (timeout_s +
backoff_max_s)`. Stay well under RabbitMQ's consumer_timeout (1,800 s by default on 3.10 and
4.x), past which the broker closes the channel and counts a redelivery. A long outage is the
circuit breaker's job, not the retry loop's.
"""


def destinations(file: str, dests: Sequence[Destination]) -> None:
    """Backoff bounds in order, and every destination's retries within HOLD_BUDGET_S."""
    for i, dest in enumerate(dests):
        where = f"destinations[{i}]"
        if dest.backoff_min_s > dest.backoff_max_s:
            raise ConfigError(file, f"{where}.backoff_min_s", "must not exceed backoff_max_s")
        hold_s = dest.max_attempts * (dest.timeout_s + dest.backoff_max_s)
        if hold_s > HOLD_BUDGET_S:
            raise ConfigError(
                file,
                f"{where}.max_attempts",
                f"a worker could hold one message for {hold_s:.0f}s (max_attempts x (timeout_s + backoff_max_s)), "
                f"over {HOLD_BUDGET_S:.0f}s: RabbitMQ's consumer_timeout (30 min by default) would close the "
                "channel and count a redelivery. Lower max_attempts, timeout_s or backoff_max_s; a long outage "
                "is the circuit breaker's job, not the retry loop's.",
            )


def routes(file: str, routes: Sequence[Route], dests: Sequence[Destination], types: Sequence[MessageType]) -> None:
    """Every route names a configured destination and a configured message type (or "*")."""
    dest_ids = {d.id for d in dests}
    type_names = {t.name for t in types}
    for i, route in enumerate(routes):
        if route.destination not in dest_ids:
            raise ConfigError(file, f"routes[{i}].destination", f"unknown destination {route.destination!r}")
        if route.message_type != "*" and route.message_type not in type_names:
            raise ConfigError(file, f"routes[{i}].message_type", f"unknown message type {route.message_type!r}")


def dedup_timeouts(file: str, broker: BrokerSettings, dedup: Dedup) -> None:
    """A claim outlives its publish's confirm wait plus the late wait, or it could be queued twice."""
    if dedup.claim_timeout_s <= broker.confirm_timeout_s + dedup.late_confirm_wait_s:
        raise ConfigError(
            file,
            "dedup.claim_timeout_s",
            f"{dedup.claim_timeout_s:g} must exceed broker.confirm_timeout_s + dedup.late_confirm_wait_s "
            f"({broker.confirm_timeout_s:g} + {dedup.late_confirm_wait_s:g}), or a publish whose confirm is "
            "still awaited could be taken over and queued twice; raise it or lower dedup.late_confirm_wait_s",
        )


PARTITION_SUFFIX = "_events_p202611"
"""The longest name the journal derives from `[dedup] table` on PostgreSQL (a monthly events partition)."""


def journal(file: str, dedup: Dedup, journal: JournalSettings) -> None:
    """Records outlive the dedup window, and every derived PostgreSQL name fits in 63 bytes."""
    if not journal.enabled:
        return
    if journal.retention_days < dedup.window_days:
        raise ConfigError(
            file,
            "journal.retention_days",
            f"{journal.retention_days:g} is shorter than dedup.window_days ({dedup.window_days:g}): a record "
            "would be deleted while it still decides what is a duplicate; raise it",
        )
    longest = len(dedup.table) + len(PARTITION_SUFFIX)
    if dedup.backend == "postgres" and longest > 63:
        raise ConfigError(
            file,
            "dedup.table",
            f"{dedup.table!r} is too long for the journal: its events partitions are named "
            f"<table>{PARTITION_SUFFIX} and PostgreSQL cuts names at 63 bytes; use at most "
            f"{63 - len(PARTITION_SUFFIX)} characters",
        )


def security(file: str, server: Server, partners: Sequence[Partner], admin: Admin) -> None:
    """TLS files in pairs, every partner able to authenticate, no credential naming two parties."""
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


def inboxes(file: str, dests: Sequence[Destination], partners: Sequence[Partner], journal: JournalSettings) -> None:
    """Every inbox names a configured partner, one inbox per partner, and the journal is on.

    The journal is where an inbox keeps what the broker cannot answer: which message ids the
    partner acknowledged (gateway/inbox/lease.py says why), so an inbox without it would
    offer acknowledged messages again forever.
    """
    known = {p.id for p in partners}
    owner: dict[str, str] = {}
    for i, dest in enumerate(dests):
        if not dest.is_inbox:
            continue
        where = f"destinations[{i}]"
        if dest.partner not in known:
            raise ConfigError(file, f"{where}.partner", f"unknown partner {dest.partner!r}; add it under [[partners]]")
        other = owner.setdefault(str(dest.partner), dest.id)
        if other != dest.id:
            raise ConfigError(file, f"{where}.partner", f"{dest.partner!r} already has the inbox {other!r}")
        if not journal.enabled:
            raise ConfigError(
                file,
                f"{where}.kind",
                'an inbox needs the journal (it records acknowledgements): set [dedup] backend = "sqlite" '
                'or "postgres" and leave [journal] enabled',
            )
