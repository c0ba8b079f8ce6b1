"""Config errors name the file and the key; env overrides only secrets and the broker URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings.load import load_settings
from gateway.settings.model import Secret
from tests.helpers import config_doc, to_toml


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(doc))
    return path


def test_example_configs_load() -> None:
    root = Path(__file__).resolve().parents[3]
    s = load_settings(root / "ops" / "gateway.toml", env={})
    assert {t.name for t in s.message_types} == {"CUSDEC", "CUSRES", "HANDOVER", "GATEEVT", "ECOO", "ACDD", "ACK"}
    assert s.message_types[0].schema.is_absolute()  # relative to the config file
    docker = load_settings(root / "ops" / "docker" / "gateway.toml", env={"SWGW_BROKER_URL": "amqp://u:p@h:5672/"})
    assert docker.server.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d["server"].update(port="80"), "server.port", "expected int"),
        (lambda d: d["server"].update(max_body_bytes=0), "server.max_body_bytes", "must be > 0"),
        (lambda d: d["broker"].update(url="http://x"), "broker.url", "amqp://"),
        (lambda d: d["destinations"][0].update(timout_s=3), "destinations[0].timout_s", "unknown key"),
        (lambda d: d["destinations"][0].update(url="ftp://x"), "destinations[0].url", "not an http"),
        (
            lambda d: d["destinations"][0].update(health_ok_statuses=[200, 700]),
            "destinations[0].health_ok_statuses",
            "HTTP status codes",
        ),
        (
            lambda d: d["destinations"][0].update(backoff_min_s=9, backoff_max_s=1),
            "destinations[0].backoff_min_s",
            "must not exceed",
        ),
        (
            lambda d: d["destinations"][0].update(max_attempts=40, timeout_s=30, backoff_max_s=60),
            "destinations[0].max_attempts",
            "consumer_timeout",
        ),
        (lambda d: d["routes"][0].update(destination="nowhere"), "routes[0].destination", "unknown destination"),
        (lambda d: d["routes"][0].update(message_type="NOPE"), "routes[0].message_type", "unknown message type"),
        (lambda d: d["partners"][0].update(token_sha256=["abc"]), "partners[0].token_sha256", "64 lowercase hex"),
        (lambda d: d["partners"].append(dict(d["partners"][0])), "partners[2].id", "duplicate id"),
        (lambda d: d["message_types"][0].update(schema="missing.xsd"), "message_types[0].schema", "does not exist"),
        (lambda d: d["logging"].update(level="LOUD"), "logging.level", "not one of"),
        (lambda d: d["partners"][1].update(burst=10), "partners[1].burst", "needs rate_per_s"),
        (lambda d: d["partners"][1].update(rate_per_s=0), "partners[1].rate_per_s", "must be > 0"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path: Path, mutate: Any, key: str, words: str) -> None:
    doc = config_doc("p")
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert exc.value.key == key
    assert exc.value.file == str(path)
    assert words in str(exc.value)


def test_partner_rate_limits_are_opt_in_and_burst_defaults_to_two_seconds_of_rate(tmp_path: Path) -> None:
    doc = config_doc("p")
    doc["partners"][0] = {"id": "VN-NSW", "token_sha256": doc["partners"][0]["token_sha256"], "rate_per_s": 40}
    partners = load_settings(write(tmp_path, doc), env={}).partners
    assert (partners[0].rate_per_s, partners[0].burst) == (40.0, 80)
    assert (partners[1].rate_per_s, partners[1].burst) == (None, None)  # no rate_per_s: unlimited


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="syntax"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_env_overrides_broker_url_and_the_file_key_still_counts_as_known(tmp_path: Path) -> None:
    path = write(tmp_path, config_doc("p"))
    s = load_settings(path, env={"SWGW_BROKER_URL": "amqp://secret:pw@10.0.0.1:5672/"})
    assert s.broker.url.reveal() == "amqp://secret:pw@10.0.0.1:5672/"
    assert "secret" not in repr(s)  # credentials never print


def test_secret_never_prints() -> None:
    s = Secret("amqp://user:hunter2@host/")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "hunter2" not in f"{s}"
    assert s.reveal().endswith("host/")
