"""Time, the one way the gateway writes, reads and injects it.

- `now_utc()` and `iso(ts)`: every timestamp the gateway writes (receipts, parking,
  headers, the admin API) is UTC ISO-8601 with milliseconds and a `Z`.
- `parse_iso(text)`: the one ISO-8601 reader; a trailing `Z` means UTC. It raises
  ValueError; `parse_iso_or_none` is the forgiving form for values read back from headers
  or another process's JSON, where garbage must not crash the reader.
- `Clock` and `Sleep`: the types of the clocks and sleeps injected everywhere, so tests
  run on fake time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""Seconds, monotonic or unix as the parameter says; `time.monotonic` or `time.time` in production."""

Sleep = Callable[[float], Awaitable[None]]
"""Waits the given seconds; `asyncio.sleep` in production."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """`2026-11-23T01:02:03.456Z`: UTC, milliseconds, `Z`."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_unix(ts: float | None) -> str | None:
    """`iso` of a unix time; None stays None."""
    return iso(datetime.fromtimestamp(ts, UTC)) if ts is not None else None


def parse_iso(text: str) -> datetime:
    """An ISO-8601 date-time; `Z` means UTC. Without an offset the result is naive. Raises ValueError."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_iso_or_none(value: object) -> datetime | None:
    """`parse_iso` for values from outside: None for anything that is not a non-empty ISO-8601 string."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def unix_or_none(value: object) -> float | None:
    """The unix time of an ISO-8601 string (a naive one read as local time), or None if it is not one."""
    parsed = parse_iso_or_none(value)
    return parsed.timestamp() if parsed is not None else None
