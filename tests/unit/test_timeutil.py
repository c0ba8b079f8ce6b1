"""gateway.timeutil: the one ISO-8601 writer and reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.timeutil import iso, iso_unix, parse_iso, parse_iso_or_none, unix_or_none

ICT = timezone(timedelta(hours=7))


def test_iso_is_utc_with_milliseconds_and_z() -> None:
    assert iso(datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=ICT)) == "2026-11-23T01:00:00.123Z"
    assert iso_unix(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_unix(None) is None


def test_parse_iso_reads_z_and_offsets_and_round_trips_iso() -> None:
    when = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    assert parse_iso("2026-11-23T01:00:00Z") == when
    assert parse_iso("2026-11-23T08:00:00+07:00") == when
    assert parse_iso(iso(when)) == when
    assert parse_iso("2026-11-23T01:00:00").tzinfo is None  # no offset: naive, the caller decides
    with pytest.raises(ValueError, match="yesterday"):
        parse_iso("yesterday")


@pytest.mark.parametrize("value", [None, "", "garbage", 17, b"2026-11-23T01:00:00Z"])
def test_the_forgiving_forms_give_none_for_anything_else(value: object) -> None:
    assert parse_iso_or_none(value) is None
    assert unix_or_none(value) is None


def test_unix_or_none_is_the_unix_time() -> None:
    assert unix_or_none("1970-01-01T00:00:10.000Z") == 10.0
