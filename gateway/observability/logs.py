"""Logging: one JSON object per line for machines, or a readable line for people.

Message-related events pass their context as `extra={...}` (event, message_id, partner,
message_type, destination, ...); the formatter copies only those known keys, so a body or
token passed as `extra` can never reach a log line by accident.

The message text itself is built from format arguments nobody whitelists, so the
formatters also scrub it (`safe_message`): a bytes argument (bodies travel as bytes
everywhere in the gateway) is printed as its length, and a `Bearer`/`Basic` credential is
masked wherever it appears, including in context values and tracebacks. What stays the
caller's job: not pasting a body into an f-string (it is a str by then, like any other).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from gateway.settings.model import Logging

CONTEXT_KEYS = (
    "event",
    "message_id",
    "partner",
    "message_type",
    "destination",
    "status",
    "reason",
    "attempt",
    "outcome",
    "state",
    "backlog",
    "incident",
    "duration_ms",
    "count",
    "error",
)


# 8+ characters: real tokens are long, and "the bearer of" stays readable.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")


def mask_credentials(text: str) -> str:
    """`Authorization: Bearer abc` → `Authorization: Bearer [redacted]`."""
    if "b" not in text and "B" not in text:  # no "bearer"/"basic" possible: skip the regex (hot path)
        return text
    return _CREDENTIAL.sub(r"\1\2[redacted]", text)


def _scrub(arg: object) -> object:
    if isinstance(arg, bytes | bytearray | memoryview):
        return f"<{len(arg)} bytes>"
    return arg


def safe_message(record: logging.LogRecord) -> str:
    """record.getMessage(), with bytes arguments shown as their length and credentials masked."""
    args = record.args
    if isinstance(args, Mapping):
        args = {k: _scrub(v) for k, v in args.items()}
    elif args:
        args = tuple(_scrub(a) for a in args)
    msg = str(record.msg)
    if args:
        msg = msg % args
    return mask_credentials(msg)


def _context(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in CONTEXT_KEYS:
        value = record.__dict__.get(key)
        if value is not None:
            out[key] = mask_credentials(value) if isinstance(value, str) else _scrub(value)
    return out


_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode  # json.dumps(**kw) builds one per call


class _UtcStamp:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        micro = round((created - second) * 1_000_000)  # as datetime rounds, then isoformat truncates
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micro // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC), level, logger, msg, the context keys present, exc."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _UtcStamp()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self._stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": safe_message(record),
            **_context(record),
        }
        if record.exc_info:
            out["exc"] = mask_credentials(self.formatException(record.exc_info))
        return _ENCODE(out)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message  [key=value ...]` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in _context(record).items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {safe_message(record)}"
        line = f"{line}  [{ctx}]" if ctx else line
        if record.exc_info:
            line += "\n" + mask_credentials(self.formatException(record.exc_info))
        return line


def setup(cfg: Logging, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr by default; `swgw demo` gives a file, so its narration stays readable)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    logging.getLogger("swgw").setLevel(cfg.level)
    for noisy in ("aio_pika", "aiormq", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(cfg.level)))
    # aiohttp logs every request its parser rejects (oversized or malformed headers) at ERROR
    # with a traceback: under attack that floods the log. The client got its 400/431, and
    # handler errors are logged by problems.py with an incident id instead.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
