"""Journal stores on real SQLite and real PostgreSQL: the same tests run on both."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.settings.model import Dedup, Secret
from tests.helpers import drop_pg_table, require_postgres
from tests.unit.journal.stores import Clock, Stores


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """Builds stores on one isolated file or table; several instances act as several processes/replicas."""
    clock = Clock()
    table = f"t_{uuid.uuid4().hex[:12]}"
    if request.param == "postgres":
        dsn = require_postgres()
        settings = Dedup(backend="postgres", dsn=Secret(dsn), table=table, claim_timeout_s=60, pool_size=20)
    else:
        settings = Dedup(backend="sqlite", path=tmp_path / "journal.sqlite3", table=table, claim_timeout_s=60)
    made = Stores(settings, clock)
    yield made
    await made.close()
    if request.param == "postgres":
        await drop_pg_table(table)
