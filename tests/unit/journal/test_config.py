"""`[journal]`: parsed with errors naming the key; off without a store, and check-config says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.journal.postgres import PostgresStore
from gateway.journal.service import Journal, describe
from gateway.journal.sqlite import SqliteStore
from gateway.journal.writer import BatchWriter, NullWriter
from gateway.observability.metrics import Metrics
from gateway.settings.load import load_settings
from gateway.settings.model import JournalSettings, Settings
from tests.helpers import PG_DSN, config_doc, to_toml


def _load(tmp_path: Path, journal: dict[str, object] | None = None, dedup: dict[str, object] | None = None) -> Settings:
    doc = config_doc("swgw-test")
    if journal is not None:
        doc["journal"] = journal
    if dedup is not None:
        doc["dedup"] = dedup
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return load_settings(path, env={})


def test_the_journal_is_on_by_default_and_keeps_five_years(tmp_path: Path) -> None:
    s = _load(tmp_path)
    assert s.journal == JournalSettings(enabled=True, retention_days=1825.0)
    assert _load(tmp_path, {"retention_days": 3650}).journal.retention_days == 3650.0
    assert not _load(tmp_path, {"enabled": False}).journal.enabled


def test_without_a_store_the_journal_is_off(tmp_path: Path) -> None:
    s = _load(tmp_path, dedup={"backend": "none"})
    assert not s.journal.enabled
    assert "journal: off" in describe(s)
    assert 'backend = "none"' in describe(s)


@pytest.mark.parametrize(
    ("journal", "dedup", "key", "fragment"),
    [
        ({"enabled": True}, {"backend": "none"}, "journal.enabled", 'backend = "none" keeps none'),
        ({"enabled": "yes"}, None, "journal.enabled", "expected bool"),
        ({"retention_days": 0}, None, "journal.retention_days", "must be > 0"),
        ({"retention_days": 3}, None, "journal.retention_days", "shorter than dedup.window_days (7)"),
        ({"retention": 30}, None, "journal.retention", "unknown key"),
        (
            None,
            {"backend": "postgres", "dsn": "postgresql://h/db", "table": "t" * 49},
            "dedup.table",
            "at most 48 characters",
        ),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, journal: dict[str, object] | None, dedup: dict[str, object] | None, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, journal, dedup)
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_retention_shorter_than_the_window_is_fine_with_the_journal_off(tmp_path: Path) -> None:
    assert not _load(tmp_path, {"enabled": False, "retention_days": 3}).journal.enabled


def test_check_config_says_whether_the_journal_is_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _load(tmp_path, {"retention_days": 3650})
    assert main(["check-config", "--config", str(tmp_path / "gateway.toml")]) == 0
    out = capsys.readouterr().out
    assert "journal: on (sqlite" in out
    assert "kept 3650 days, duplicates within 7 days" in out
    _load(tmp_path, dedup={"backend": "none"})
    assert main(["check-config", "--config", str(tmp_path / "gateway.toml")]) == 0
    assert 'journal: off ([dedup] backend = "none"' in capsys.readouterr().out


def test_the_journal_of_a_process_follows_the_config(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    on = Journal.from_settings(_load(tmp_path), metrics)
    assert isinstance(on.store, SqliteStore)
    assert isinstance(on.writer, BatchWriter)
    assert on.reader is on.store
    off = Journal.from_settings(_load(tmp_path, {"enabled": False}), metrics)
    assert isinstance(off.store, SqliteStore)  # still intake's store of seen ids
    assert isinstance(off.writer, NullWriter)
    assert off.reader is None
    none = Journal.from_settings(_load(tmp_path, dedup={"backend": "none"}), metrics)
    assert (none.store, none.reader) == (None, None)
    pg = Journal.from_settings(_load(tmp_path, dedup={"backend": "postgres", "dsn": PG_DSN}), metrics)
    assert isinstance(pg.store, PostgresStore)
    assert pg.store.events_table == "swgw_test_dedup_events"
