"""gateway.tools.schemadoc: the committed schemas/README.md is exactly what the XSDs generate.

If this fails after a schema change, run `python -m gateway.tools.schemadoc` and commit the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from gateway.tools.schemadoc import README, SCHEMAS, default_paths, main, render

XS = "{http://www.w3.org/2001/XMLSchema}"


@pytest.fixture(scope="module")
def reference() -> str:
    return render(default_paths())


def test_committed_readme_is_in_sync(reference: str) -> None:
    assert README.read_text(encoding="utf-8") == reference, "run: python -m gateway.tools.schemadoc"


def test_render_is_deterministic(reference: str) -> None:
    assert render(default_paths()) == reference


def test_check_fails_on_stale_file_and_write_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "README.md"
    out.write_text("# stale\n", encoding="utf-8")
    assert main(["--check", "--output", str(out)]) == 1
    assert "out of date; run: python -m gateway.tools.schemadoc" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "# stale\n", "--check must not write"
    assert main(["--output", str(out)]) == 0
    assert main(["--check", "--output", str(out)]) == 0


def test_order_is_envelope_payloads_then_shared_types() -> None:
    names = [p.relative_to(SCHEMAS).as_posix() for p in default_paths()]
    assert names[0] == "envelope/envelope-1.xsd"
    assert names[1] == "customs/declaration.xsd"
    assert names[-1] == "common/common-1.xsd"
    assert len(names) == len(list(SCHEMAS.rglob("*.xsd")))


@pytest.mark.parametrize("xsd", default_paths(), ids=lambda p: p.relative_to(SCHEMAS).as_posix())
def test_every_element_and_its_documentation_appears(reference: str, xsd: Path) -> None:
    doc = etree.parse(str(xsd))
    for element in doc.iter(f"{XS}element"):
        name = element.get("name")
        assert f"/{name}`" in reference or f"/cmn:{name}`" in reference or f"`{name}`" in reference, name
        text = element.findtext(f"{XS}annotation/{XS}documentation")
        if text:
            assert " ".join(text.split()) in reference, name


def test_rows_show_path_cardinality_type_and_facets(reference: str) -> None:
    assert (
        "| `Declaration/GoodsItem/HSCode` | 1 | cmn:HSCodeType | pattern `[0-9]{4}\\.[0-9]{2}(\\.[0-9]{2}){0,2}`;"
        in reference
    )
    assert "| `Declaration/GoodsItem` | 1..999 | GoodsItemType |" in reference
    assert "| `Declaration/Declarant/cmn:TaxID` | 1 | cmn:TaxIDType |" in reference
    assert "| `Declaration/Importer/cmn:TaxID` | 0..1 | cmn:TaxIDType |" in reference
    assert (
        "| `Declaration/TotalCustomsValueAmount/@currencyID` | 1 | cmn:CurrencyCodeType | pattern `[A-Z]{3}`"
        in reference
    )
    assert (
        "| `DeclarationResponse/InspectionChannelCode` | 0..1 | InspectionChannelCodeType | "
        "one of `GREEN`, `YELLOW`, `RED`" in reference
    )


def test_pipes_in_patterns_do_not_break_tables(reference: str) -> None:
    assert "(Z\\|[+\\-][0-9]{2}:[0-9]{2})" in reference
    columns = 0
    for line in reference.splitlines():
        if line.startswith("|---"):
            columns = line.count("|")
        elif line.startswith("| `"):
            assert line.replace("\\|", "").count("|") == columns, line
