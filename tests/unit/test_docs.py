"""The README is one screen that links the docs; the docs' links, anchors and named tests all resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = ["docs/partners.md", "docs/operations.md", "docs/architecture.md", "docs/performance.md"]
PAGES = ["README.md", *DOCS]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)(\*?)")  # a trailing * names a family


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens (code fences skipped)."""
    out, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.*)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_the_readme_is_a_first_screen_with_the_two_commands_and_links_every_doc() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 60
    assert "bash ops/demo.sh" in readme
    assert "bash .ci/run" in readme
    for doc in DOCS:
        assert f"]({doc})" in readme, doc


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_and_anchor_resolves(page: str) -> None:
    here = ROOT / page
    broken = []
    for target in _LINK.findall(here.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        path = (here.parent / file).resolve() if file else here
        unknown_anchor = bool(anchor) and path.suffix == ".md" and path.exists() and anchor not in _anchors(path)
        if not path.exists() or unknown_anchor:
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES)
def test_every_test_the_docs_name_exists(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    missing = []
    for file, name, family in _TEST_REF.findall(text):
        source = ROOT / file
        pattern = rf"def {name}" + ("" if family else r"\b")
        if not source.exists() or not re.search(pattern, source.read_text(encoding="utf-8")):
            missing.append(f"{file}::{name}")
    assert missing == []


@pytest.mark.parametrize("page", PAGES)
def test_no_commit_hash_goes_stale_in_the_docs(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    assert not re.findall(r"\bcommit [0-9a-f]{7,40}\b", text)
