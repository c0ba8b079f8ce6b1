"""Logging: one JSON object per line for machines, or a readable line for people.

Message-related events pass their context as `extra={...}` (event, message_id, partner,
message_type, destination, ...); the formatter copies only those known keys, so a body or
token can never reach a log line by accident.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gateway.config import Logging

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{k}={record.__dict__[k]}" for k in CONTEXT_KEYS if record.__dict__.get(k) is not None)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line}  [{ctx}]" if ctx else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(cfg: Logging) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    logging.getLogger("swgw").setLevel(cfg.level)
    for noisy in ("aio_pika", "aiormq", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(cfg.level)))
