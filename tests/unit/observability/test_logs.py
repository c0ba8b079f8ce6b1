"""Log lines ops will read: one JSON object per line with the message context, never a body
or a credential, at the level the config asks for."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.observability import logs
from gateway.settings.model import Logging

BODY = b'<?xml version="1.0"?><Envelope><Body><Declaration>SECRET-CARGO-42</Declaration></Body></Envelope>'
TOKEN = "tok_9f8e7d6c5b4a"
CONTEXT = {
    "event": "queued",
    "message_id": "VNNSW-CUSDEC-0001",
    "partner": "VN-NSW",
    "message_type": "CUSDEC",
    "destination": "vnaccs",
}
FORMATTERS = [logs.JsonFormatter, logs.TextFormatter]


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"swgw.test.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


@pytest.fixture
def root_logging() -> Iterator[None]:
    """logs.setup() reconfigures the root logger; put it back for the next test."""
    names = ("", "swgw", "aio_pika", "aiormq", "aiohttp.access")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for n, (level, handlers) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).handlers[:] = handlers


def test_json_is_one_object_per_line_with_the_message_context() -> None:
    log, out = _logger(logs.JsonFormatter())
    log.info("queued", extra=CONTEXT)
    log.warning("line one\nline two", extra={**CONTEXT, "event": "delivery_failed", "attempt": 3, "status": 503})
    try:
        raise RuntimeError("backend said no")
    except RuntimeError:
        log.exception("unexpected", extra={"event": "internal_error", "incident": "inc-1"})

    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # newlines in messages and tracebacks are escaped, not emitted
    first, second, third = (json.loads(line) for line in lines)
    assert {k: first[k] for k in CONTEXT} == CONTEXT
    assert first["level"] == "info"
    assert first["logger"].startswith("swgw.test.")
    assert first["ts"].endswith("+00:00")
    assert (second["msg"], second["attempt"], second["status"]) == ("line one\nline two", 3, 503)
    assert third["event"] == "internal_error"
    assert "RuntimeError: backend said no" in third["exc"]
    assert "body" not in first
    assert "error" not in first  # absent context keys are left out, not null


def test_text_format_is_readable_and_carries_the_context() -> None:
    log, out = _logger(logs.TextFormatter())
    log.info("queued", extra=CONTEXT)
    line = out.getvalue().rstrip("\n")
    assert "INFO" in line
    assert "queued  [event=queued message_id=VNNSW-CUSDEC-0001 partner=VN-NSW message_type=CUSDEC" in line


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_a_body_or_token_passed_as_extra_is_dropped(formatter: type[logging.Formatter]) -> None:
    log, out = _logger(formatter())
    log.info(
        "received",
        extra={**CONTEXT, "body": BODY, "token": TOKEN, "headers": {"Authorization": f"Bearer {TOKEN}"}},
    )
    text = out.getvalue()
    assert "SECRET-CARGO" not in text
    assert TOKEN not in text
    assert "VNNSW-CUSDEC-0001" in text


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_a_body_passed_as_a_format_argument_shows_only_its_length(formatter: type[logging.Formatter]) -> None:
    log, out = _logger(formatter())
    log.info("got %s from %s", BODY, "VN-NSW", extra=CONTEXT)
    log.info("got %(body)s", {"body": bytearray(BODY)})
    text = out.getvalue()
    assert "SECRET-CARGO" not in text
    assert f"got <{len(BODY)} bytes> from VN-NSW" in text
    assert f"got <{len(BODY)} bytes>" in text.splitlines()[1]


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_credentials_are_masked_in_message_context_and_traceback(formatter: type[logging.Formatter]) -> None:
    log, out = _logger(formatter())
    log.warning("auth failed for %r", {"Authorization": f"Bearer {TOKEN}"}, extra={"event": "auth_failed"})
    log.warning("backend refused", extra={"error": f"401 for Authorization: Basic {TOKEN}"})
    try:
        raise ValueError(f"bad header: bearer {TOKEN}")
    except ValueError:
        log.exception("boom")
    text = out.getvalue()
    assert TOKEN not in text
    assert text.count("[redacted]") == 3


def test_mask_credentials_leaves_ordinary_words_alone() -> None:
    assert logs.mask_credentials("the bearer of bad news") == "the bearer of bad news"
    assert logs.mask_credentials("basically fine") == "basically fine"
    assert logs.mask_credentials("Bearer\tabc.def-1") == "Bearer\t[redacted]"


@pytest.mark.usefixtures("root_logging")
def test_setup_takes_level_and_format_from_config(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(Logging(level="WARNING", format="json"))
    logging.getLogger("swgw.ingress").info("hidden", extra=CONTEXT)
    logging.getLogger("swgw.ingress").warning("shown", extra=CONTEXT)
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["shown"]

    logs.setup(Logging(level="DEBUG", format="text"))
    logging.getLogger("swgw.delivery").debug("probe", extra={"event": "probe", "destination": "vnaccs"})
    logging.getLogger("aio_pika").info("library chatter")  # libraries stay at WARNING even in DEBUG
    err = capsys.readouterr().err
    assert "DEBUG   swgw.delivery: probe  [event=probe destination=vnaccs]" in err
    assert "library chatter" not in err


def test_cached_timestamp_is_exactly_isoformat_milliseconds() -> None:
    import random
    from datetime import UTC, datetime

    from gateway.observability.logs import _UtcStamp

    stamp = _UtcStamp()
    rng = random.Random(7)
    base = 1_795_000_000.0
    for _ in range(5000):
        t = base + rng.uniform(0, 5)  # many within the same second: the cached path
        assert stamp(t) == datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
