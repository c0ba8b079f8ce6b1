"""The console's files keep within the CSP and stay accessible.

The Content-Security-Policy (gateway/operations/console_api.py) allows no inline script or
style, so an inline <script>, an on* handler or a style attribute would be dead code in the
browser: these tests fail first. The JavaScript never writes HTML from strings (what a
backend or partner wrote must stay text) and never touches cookies. Every form control has
a label.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from gateway.operations.console_api import console_files

FILES = console_files()
HTML = sorted(n for n in FILES if n.endswith(".html"))
SCRIPTS = sorted(n for n in FILES if n.endswith(".js"))


class Page(HTMLParser):
    """Collects what the checks need: script and style elements, every attribute, labels and controls."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def inline_code(text: str) -> list[str]:
    """What the CSP would block: inline scripts, <style>, on* handlers, style attributes, javascript: URLs."""
    page = parse(text)
    found = [f"inline script {s.strip()[:40]!r}" for s in page.script_text]
    for tag, attrs in page.tags:
        if tag == "script" and not attrs.get("src"):
            found.append("<script> without src")
        if tag == "style":
            found.append("<style> element")
        for name, value in attrs.items():
            if name.startswith("on"):
                found.append(f"<{tag} {name}=...>")
            if name == "style":
                found.append(f"<{tag} style=...>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                found.append(f"<{tag} {name}=javascript:...>")
    return found


def test_the_console_ships_its_page_script_and_style() -> None:
    assert {"index.html", "console.js", "console.css"} <= set(FILES)


@pytest.mark.parametrize("name", HTML)
def test_no_inline_script_or_style(name: str) -> None:
    assert inline_code(FILES[name][0].decode("utf-8")) == []


def test_the_check_catches_each_kind_of_inline_code() -> None:
    bad = (
        '<script>alert(1)</script><script type="module"></script><style>p{}</style>'
        '<button onclick="go()">x</button><p style="color:red">y</p><a href="javascript:go()">z</a>'
    )
    assert inline_code(bad) == [
        "inline script 'alert(1)'",
        "<script> without src",
        "<script> without src",
        "<style> element",
        "<button onclick=...>",
        "<p style=...>",
        "<a href=javascript:...>",
    ]


@pytest.mark.parametrize("name", HTML)
def test_scripts_are_modules_from_the_console_itself(name: str) -> None:
    page = parse(FILES[name][0].decode("utf-8"))
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts
    for attrs in scripts:
        assert attrs.get("type") == "module"
        assert (attrs.get("src") or "").startswith("/console/")
    for tag, attrs in page.tags:
        for name_ in ("src", "href"):
            value = attrs.get(name_) or ""
            assert not re.match(r"^(https?:)?//", value), f"<{tag} {name_}={value}>: the CSP allows only 'self'"


@pytest.mark.parametrize("name", HTML)
def test_every_form_control_has_a_label(name: str) -> None:
    page = parse(FILES[name][0].decode("utf-8"))
    labelled = {a.get("for") for t, a in page.tags if t == "label"}
    controls = [a for t, a in page.tags if t in ("input", "select", "textarea") and a.get("type") != "hidden"]
    assert controls
    assert [a.get("id") for a in controls if a.get("id") not in labelled] == []
    assert ("html", {"lang": "en"}) in page.tags


def test_the_token_field_is_never_submitted_by_the_browser_itself() -> None:
    """A form field without a name is never sent: with its script broken, the page cannot put the token in a URL."""
    page = parse(FILES["index.html"][0].decode("utf-8"))
    (token,) = [a for t, a in page.tags if t == "input" and a.get("id") == "token"]
    assert token.get("type") == "password"
    assert "name" not in token


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_javascript_writes_text_not_html_and_keeps_no_cookie(name: str) -> None:
    source = FILES[name][0].decode("utf-8")
    for risky in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "document.cookie",
    ):
        assert risky not in source, f"{name} uses {risky}"
    assert "localStorage" not in source  # the token lives only as long as the tab: sessionStorage
