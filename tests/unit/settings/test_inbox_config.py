"""`[[destinations]] kind = "inbox"`: what a pull inbox needs, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings.load import load_settings
from tests.helpers import config_doc, to_toml

INBOX = {"id": "th-inbox", "kind": "inbox", "partner": "TH-NSW"}


def load(tmp_path: Path, doc: dict[str, Any]) -> Any:
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(doc))
    return load_settings(path, env={})


def with_inbox(**extra: Any) -> dict[str, Any]:
    doc = config_doc("p")
    doc["destinations"].append({**INBOX, **extra})
    return doc


def test_an_inbox_needs_no_url_and_has_documented_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, with_inbox())
    http, inbox = s.destinations
    assert (http.kind, http.is_inbox, http.partner) == ("http", False, None)
    assert (inbox.kind, inbox.is_inbox, inbox.partner, inbox.url) == ("inbox", True, "TH-NSW", "")
    assert (inbox.lease_s, inbox.unpolled_alert_s) == (300.0, 3600.0)
    assert load(tmp_path, with_inbox(lease_s=30)).destinations[1].lease_s == 30.0


@pytest.mark.parametrize(
    ("doc", "key", "words"),
    [
        (with_inbox(url="http://x/in"), "destinations[1].url", "has no url"),
        (with_inbox(partner="NOBODY"), "destinations[1].partner", "unknown partner 'NOBODY'"),
        (with_inbox(kind="mailbox"), "destinations[1].kind", "not one of http, inbox"),
        (with_inbox(lease_s=0), "destinations[1].lease_s", "must be > 0"),
        (with_inbox(unpolled_alert_s=-1), "destinations[1].unpolled_alert_s", "must be > 0"),
        (with_inbox(leese_s=3), "destinations[1].leese_s", "unknown key"),
    ],
)
def test_bad_inboxes_name_the_key(tmp_path: Path, doc: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, doc)
    assert exc.value.key == key
    assert words in str(exc.value)


def test_an_inbox_needs_its_partner_an_http_destination_has_none_and_one_inbox_each(tmp_path: Path) -> None:
    missing = config_doc("p")
    missing["destinations"].append({"id": "th-inbox", "kind": "inbox"})
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, missing)
    assert (exc.value.key, "is required" in str(exc.value)) == ("destinations[1].partner", True)

    http_partner = config_doc("p")
    http_partner["destinations"][0]["partner"] = "TH-NSW"
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, http_partner)
    assert exc.value.key == "destinations[0].partner"
    assert "only an inbox" in str(exc.value)

    two = with_inbox()
    two["destinations"].append({**INBOX, "id": "th-inbox-2"})
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, two)
    assert exc.value.key == "destinations[2].partner"
    assert "already has the inbox 'th-inbox'" in str(exc.value)


def test_an_inbox_needs_the_journal(tmp_path: Path) -> None:
    for off in ({"dedup": {"backend": "none"}}, {"journal": {"enabled": False}}):
        doc = with_inbox()
        doc.update(off)
        with pytest.raises(ConfigError) as exc:
            load(tmp_path, doc)
        assert exc.value.key == "destinations[1].kind"
        assert "needs the journal" in str(exc.value)
