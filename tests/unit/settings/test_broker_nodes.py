"""`[broker] url` as one node or a cluster's list, the initial group size and the replica id."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings.load import load_settings
from tests.helpers import config_doc, to_toml

NODES = ["amqp://u:pw@10.0.0.1:5672/", "amqp://u:pw@10.0.0.2:5672/", "amqp://u:pw@10.0.0.3:5672/"]


def load(tmp_path: Path, env: dict[str, str] | None = None, **broker: Any) -> Any:
    doc = config_doc("p", broker=broker)
    if "url" in broker:
        doc["broker"]["url"] = broker["url"]
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(doc))
    return load_settings(path, env=env or {})


def test_a_list_of_nodes_is_kept_in_order_and_url_is_the_first(tmp_path: Path) -> None:
    s = load(tmp_path, url=NODES)
    assert [u.reveal() for u in s.broker.nodes] == NODES
    assert s.broker.url.reveal() == NODES[0]
    assert "pw" not in repr(s.broker)  # credentials never print


def test_one_url_is_a_list_of_one(tmp_path: Path) -> None:
    s = load(tmp_path, url=NODES[0])
    assert [u.reveal() for u in s.broker.nodes] == NODES[:1]


@pytest.mark.parametrize(
    ("url", "key", "words"),
    [
        ([], "broker.url", "non-empty list"),
        (["amqp://h1/", "http://h2/"], "broker.url[1]", "amqp://"),
        (["amqp://h1/", 5], "broker.url[1]", "amqp://"),
        (["amqp://h1/", "amqp://h1/"], "broker.url", "same node twice"),
        (7, "broker.url", "list of URLs"),
    ],
)
def test_bad_node_lists_name_the_key(tmp_path: Path, url: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, url=url)
    assert key in str(err.value)
    assert words in str(err.value)


def test_env_overrides_the_list_comma_separated(tmp_path: Path) -> None:
    s = load(tmp_path, env={"SWGW_BROKER_URL": f"{NODES[1]}, {NODES[2]}"}, url=NODES)
    assert [u.reveal() for u in s.broker.nodes] == NODES[1:]


def test_a_bad_url_in_the_env_is_refused_without_printing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, env={"SWGW_BROKER_URL": "amqp://a/,http://u:secretpw@b/"})
    assert "broker.url[1]" in str(err.value)
    assert "secretpw" not in str(err.value)


def test_group_size_defaults_to_three_and_zero_leaves_it_to_rabbitmq(tmp_path: Path) -> None:
    assert load(tmp_path).broker.quorum_initial_group_size == 3
    assert load(tmp_path, quorum_initial_group_size=5).broker.quorum_initial_group_size == 5
    assert load(tmp_path, quorum_initial_group_size=0).broker.quorum_initial_group_size is None
    with pytest.raises(ConfigError, match=r"broker\.quorum_initial_group_size"):
        load(tmp_path, quorum_initial_group_size=-1)


def test_replica_id_defaults_to_host_and_pid(tmp_path: Path) -> None:
    assert load(tmp_path).broker.replica_id == f"{socket.gethostname()}-{os.getpid()}"
    assert load(tmp_path, replica_id="gw-a").broker.replica_id == "gw-a"
    with pytest.raises(ConfigError, match=r"broker\.replica_id"):
        load(tmp_path, replica_id="has space")
