"""`load_settings`: one TOML file → validated Settings, once at start-up, or a ConfigError.

The order of a load: read the document (gateway/settings/reader.py), parse each table
(gateway/settings/tables.py), check what must agree across tables (gateway/settings/checks.py),
refuse unknown top-level tables, and assemble the frozen Settings (gateway/settings/model.py).
Every error names the file and the key, the value and what was expected, so an operator
can fix a config without reading code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.settings import checks, tables
from gateway.settings.model import Settings
from gateway.settings.reader import TableReader, read_document, table

TABLES = (
    "server",
    "broker",
    "partners",
    "message_types",
    "destinations",
    "routes",
    "admin",
    "logging",
    "dedup",
    "journal",
    "receipts",
)
"""The top-level keys a config may have; anything else is refused as a typo."""


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate `path`. `env` defaults to os.environ (only overrides are read)."""
    env = os.environ if env is None else env
    path = Path(path).resolve()
    file = str(path)
    doc = read_document(path)
    base = path.parent
    root = TableReader(file, "", doc)
    root.used.update(TABLES)

    server = tables.server(table(doc, file, "server"), base)
    broker = tables.broker(table(doc, file, "broker"), env)
    partners = tables.partners(doc, file, env, base)
    types = tables.message_types(doc, file, base)
    dests = tables.destinations(doc, file)
    checks.destinations(file, dests)
    routes = tables.routes(doc, file)
    checks.routes(file, routes, dests, types)
    admin = tables.admin(table(doc, file, "admin"), env, base)
    checks.security(file, server, partners, admin)
    logging = tables.logging(table(doc, file, "logging"))
    dedup = tables.dedup(table(doc, file, "dedup"), env, base, broker.prefix)
    checks.dedup_timeouts(file, broker, dedup)
    journal = tables.journal(table(doc, file, "journal"), dedup)
    checks.journal(file, dedup, journal)
    checks.inboxes(file, dests, partners, journal)
    receipts = tables.receipts(table(doc, file, "receipts"), base) if "receipts" in doc else None
    root.done()

    return Settings(
        path=path,
        server=server,
        broker=broker,
        partners=partners,
        message_types=types,
        destinations=dests,
        routes=routes,
        admin=admin,
        logging=logging,
        dedup=dedup,
        journal=journal,
        receipts=receipts,
    )
