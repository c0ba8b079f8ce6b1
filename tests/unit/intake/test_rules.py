"""gateway.intake.rules: each business rule fires on the broken value, stays quiet at its boundary.

Payloads are the committed valid examples with one value changed, so every case is a
realistic, schema-shaped document; the clock is fixed, so nothing depends on today.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import Problem
from gateway.intake.rules import CLOCK_SKEW, RULES, check, iso6346_check_digit

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples"
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)

IMPORT = "CUSDEC/valid/import-a11-it-equipment.xml"
EXPORT = "CUSDEC/valid/export-b11-agricultural.xml"
ACCEPTED = "CUSRES/valid/accepted-green.xml"
RELEASED = "CUSRES/valid/released-yellow.xml"
REJECTED = "CUSRES/valid/rejected-with-errors.xml"
HANDOVER = "HANDOVER/valid/catlai-to-icd-transimex.xml"
GATE_IN = "GATEEVT/valid/gate-in-catlai.xml"
GATE_OUT = "GATEEVT/valid/gate-out-wh01.xml"
ECOO = "ECOO/valid/form-d-th-to-vn.xml"
ACDD = "ACDD/valid/th-export-to-vn.xml"
ACK_RECEIVED = "ACK/valid/received.xml"
ACK_REJECTED = "ACK/valid/rejected-with-errors.xml"


def payload(example: str, *subs: tuple[str, str]) -> etree._Element:
    """The payload of a valid example after replacing each `old` with `new` (each must occur)."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new, 1)
    root = etree.fromstring(text.encode())
    return root[1][0]


def problems(example: str, *subs: tuple[str, str], now: datetime = NOW) -> list[Problem]:
    return check(payload(example, *subs), now=now)


def only(example: str, *subs: tuple[str, str], now: datetime = NOW) -> Problem:
    found = problems(example, *subs, now=now)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


@pytest.mark.parametrize("example", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.glob("*/valid/*.xml")))
def test_valid_examples_break_no_rule(example: str) -> None:
    assert problems(example) == []


def test_every_payload_root_has_rules() -> None:
    assert len(RULES) == 7


def test_unknown_root_has_no_rules() -> None:
    assert check(etree.fromstring(b"<Invoice xmlns='urn:oasis:ubl'><ID>1</ID></Invoice>"), now=NOW) == []


def test_problem_names_line_readable_path_and_no_column() -> None:
    p = only(IMPORT, ("<GoodsItemQuantity>4<", "<GoodsItemQuantity>3<"))
    assert p.line == 19
    assert p.column is None
    assert p.path == "/Envelope/Body/Declaration/GoodsItemQuantity"
    assert "GoodsItemQuantity is 3 but 4 GoodsItem element(s) are listed; set it to 4" in p.reason


# --- CUSDEC -------------------------------------------------------------------------------


def test_sequence_gap_reported_once_at_first_wrong_item() -> None:
    p = only(IMPORT, ("<SequenceNumeric>2<", "<SequenceNumeric>3<"))
    assert p.path == "/Envelope/Body/Declaration/GoodsItem[2]/SequenceNumeric"
    assert "this is item 2" in p.reason


def test_customs_value_total_must_match_items() -> None:
    p = only(
        IMPORT,
        (
            '<TotalCustomsValueAmount currencyID="VND">1924529000<',
            '<TotalCustomsValueAmount currencyID="VND">1924527000<',
        ),
    )
    assert "add up to 1924529000 VND" in p.reason


def test_totals_tolerate_a_cent_per_item() -> None:
    # 4 items → 0.04 USD of rounding allowed, 0.05 is not
    assert (
        problems(IMPORT, ('<TotalAmount currencyID="USD">75620.00<', '<TotalAmount currencyID="USD">75620.04<')) == []
    )
    p = only(IMPORT, ('<TotalAmount currencyID="USD">75620.00<', '<TotalAmount currencyID="USD">75620.05<'))
    assert p.path == "/Envelope/Body/Declaration/Invoice/TotalAmount"


def test_item_in_other_currency_than_total() -> None:
    p = only(IMPORT, ('<InvoiceAmount currencyID="USD">5100.00<', '<InvoiceAmount currencyID="EUR">5100.00<'))
    assert p.path == "/Envelope/Body/Declaration/GoodsItem[2]/InvoiceAmount"
    assert "is in EUR but TotalAmount is in USD" in p.reason


def test_total_gross_mass_must_match_items() -> None:
    p = only(IMPORT, ('<TotalGrossMassMeasure unitCode="KGM">1050.0<', '<TotalGrossMassMeasure unitCode="KGM">1150.0<'))
    assert "GrossMassMeasures add up to 1050.0 KGM" in p.reason


def test_net_mass_above_gross_mass() -> None:
    p = only(IMPORT, ('<NetMassMeasure unitCode="KGM">186.0<', '<NetMassMeasure unitCode="KGM">286.0<'))
    assert p.path == "/Envelope/Body/Declaration/GoodsItem[1]/NetMassMeasure"


def test_duty_within_one_currency_unit_is_accepted() -> None:
    assert (
        problems(
            IMPORT,
            ('<AssessedAmount currencyID="VND">164916000<', '<AssessedAmount currencyID="VND">164916001<'),
            ('<TotalDutyTaxAmount currencyID="VND">200011550<', '<TotalDutyTaxAmount currencyID="VND">200011551<'),
        )
        == []
    )


def test_total_duty_must_match_assessed_amounts() -> None:
    p = only(IMPORT, ('<TotalDutyTaxAmount currencyID="VND">200011550<', '<TotalDutyTaxAmount currencyID="VND">0<'))
    assert "DutyTaxFee AssessedAmounts add up to 200011550 VND" in p.reason


@pytest.mark.parametrize(("example", "kind", "party"), [(IMPORT, "IM", "Importer"), (EXPORT, "EX", "Exporter")])
def test_domestic_trader_needs_tax_id(example: str, kind: str, party: str) -> None:
    tax_ids = {"IM": "0301234567", "EX": "0315998877"}
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    block = text[text.index(f"<{party}>") : text.index(f"</{party}>")]
    p = only(example, (block, block.replace(f"<cmn:TaxID>{tax_ids[kind]}</cmn:TaxID>", "")))
    assert p.path == f"/Envelope/Body/Declaration/{party}"
    assert f"add {party}/TaxID" in p.reason


def test_preference_without_certificate() -> None:
    p = only(IMPORT, ("<OriginCertificateID>TH-2026-D-0048213</OriginCertificateID>", ""))
    assert "ATIGA preference needs the certificate of origin" in p.reason


def test_invoice_after_declaration() -> None:
    p = only(IMPORT, ("<IssueDate>2026-02-20<", "<IssueDate>2026-03-03<"))
    assert p.path == "/Envelope/Body/Declaration/Invoice/IssueDate"


# --- dates ---------------------------------------------------------------------------------


def test_clock_skew_is_tolerated_and_no_more() -> None:
    issued = "<IssueDateTime>2026-03-02T09:12:00+07:00<"
    at = datetime(2026, 3, 2, 2, 12, tzinfo=UTC)
    assert problems(IMPORT, now=at - CLOCK_SKEW) == []
    p = only(IMPORT, (issued, "<IssueDateTime>2026-03-02T09:17:01+07:00<"), now=at)
    assert "is in the future (gateway time 2026-03-02T02:12:00Z)" in p.reason


def test_offsets_are_compared_as_instants() -> None:
    # 23:30 at UTC-05:00 is 04:30 UTC the next day: in the future at 04:00 UTC
    now = datetime(2026, 3, 3, 4, 0, tzinfo=UTC)
    subs = ("<IssueDateTime>2026-03-02T09:12:00+07:00<", "<IssueDateTime>2026-03-02T23:30:00-05:00<")
    assert only(IMPORT, subs, now=now).path.endswith("/IssueDateTime")
    assert problems(IMPORT, subs, now=now + timedelta(hours=1)) == []


def test_naive_now_is_taken_as_utc() -> None:
    assert problems(IMPORT, now=datetime(2026, 3, 20, 12, 0)) == []


def test_a_date_is_future_only_once_no_time_zone_has_reached_it() -> None:
    bill_of_lading = ("<IssueDate>2026-02-24<", "<IssueDate>2026-03-03<")
    # 10:00 UTC on 2 March is midnight of 3 March in UTC+14: from then on 3 March is a real date
    assert problems(IMPORT, bill_of_lading, now=datetime(2026, 3, 2, 10, 0, tzinfo=UTC)) == []
    p = only(IMPORT, bill_of_lading, now=datetime(2026, 3, 2, 9, 59, tzinfo=UTC))
    assert p.path == "/Envelope/Body/Declaration/TransportDocument/IssueDate"


# --- CUSRES --------------------------------------------------------------------------------


def test_accepted_without_channel() -> None:
    p = only(ACCEPTED, ("<InspectionChannelCode>GREEN</InspectionChannelCode>", ""))
    assert "must give InspectionChannelCode" in p.reason


def test_accepted_with_errors_is_contradictory() -> None:
    office = "<DeclarationOfficeID>02CI</DeclarationOfficeID>"
    found = problems(
        REJECTED,
        ("<StatusCode>Rejected<", "<StatusCode>Accepted<"),
        (
            office,
            f"<DeclarationID>105834217631</DeclarationID>{office}<InspectionChannelCode>RED</InspectionChannelCode>",
        ),
    )
    assert [p.path for p in found] == [
        "/Envelope/Body/DeclarationResponse/Error[1]",
        "/Envelope/Body/DeclarationResponse/Error[2]",
    ]
    assert all("use StatusCode Rejected" in p.reason for p in found)


def test_released_needs_release_time() -> None:
    p = only(RELEASED, ("<ReleaseDateTime>2026-03-06T08:05:00+07:00</ReleaseDateTime>", ""))
    assert "StatusCode Released must give ReleaseDateTime" in p.reason


def test_cleared_needs_clearance_time_after_release() -> None:
    cleared = ("<StatusCode>Released<", "<StatusCode>Cleared<")
    assert "must give ClearanceDateTime" in only(RELEASED, cleared).reason
    early = ("</ReleaseDateTime>", "</ReleaseDateTime><ClearanceDateTime>2026-03-06T08:00:00+07:00</ClearanceDateTime>")
    p = only(RELEASED, cleared, early)
    assert "ClearanceDateTime 2026-03-06T08:00:00+07:00 is before ReleaseDateTime" in p.reason


# --- cargo ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "digit"),
    [("CSQU305438", 3), ("WHLU551238", 2), ("TCNU882341", 7), ("MSCU663987", 0), ("HLXU331882", 5)],
)
def test_iso6346_check_digit(prefix: str, digit: int) -> None:
    assert iso6346_check_digit(prefix) == digit


@pytest.mark.parametrize("bad", ["CSQU30543", "CSQU30543-", "csqu305438"])
def test_iso6346_check_digit_of_malformed_prefix_is_none(bad: str) -> None:
    assert iso6346_check_digit(bad) is None


def test_duplicate_container() -> None:
    found = problems(
        HANDOVER, ("<cmn:ID>TCNU8823417<", "<cmn:ID>WHLU5512382<"), ("<ContainerQuantity>2<", "<ContainerQuantity>2<")
    )
    assert [p.reason for p in found] == ["Container WHLU5512382 is listed twice; list each container once."]


def test_handover_between_the_same_location() -> None:
    p = only(HANDOVER, ("<cmn:ID>02CVS03<", "<cmn:ID>02CIS01<"))
    assert p.path == "/Envelope/Body/CargoHandover/ToLocation/ID"


def test_arrival_needs_receiving_officer() -> None:
    text = (EXAMPLES / HANDOVER).read_text(encoding="utf-8")
    officer = text[text.index("<ReceivingOfficer>") : text.index("</ReceivingOfficer>") + len("</ReceivingOfficer>")]
    assert "needs the ReceivingOfficer" in only(HANDOVER, (officer, "")).reason


def test_gate_in_must_not_carry_gate_in_time() -> None:
    p = only(GATE_IN, ("<Location>", "<GateInDateTime>2026-03-05T18:00:00+07:00</GateInDateTime><Location>"))
    assert "OUT events only" in p.reason


def test_gate_out_needs_gate_in_time() -> None:
    p = only(GATE_OUT, ("<GateInDateTime>2026-02-27T15:22:00+07:00</GateInDateTime>", ""))
    assert p.path == "/Envelope/Body/GateEvent/DirectionCode"


def test_empty_container_leaves_without_declaration() -> None:
    assert (
        problems(
            GATE_OUT,
            ("<DeclarationID>105834217630</DeclarationID>", ""),
            ("<cmn:FullnessCode>FULL<", "<cmn:FullnessCode>EMPTY<"),
        )
        == []
    )


# --- ASEAN ---------------------------------------------------------------------------------


def test_certificate_expiring_before_issue() -> None:
    p = only(ECOO, ("<ExpiryDate>2027-02-22<", "<ExpiryDate>2026-02-01<"))
    assert "must be after the issue date 2026-02-23" in p.reason


def test_certificate_issued_on_29_february_may_run_to_28_february() -> None:
    subs = ("2026-02-23T09:30:00+07:00", "2028-02-29T09:30:00+07:00")
    later = datetime(2028, 3, 1, tzinfo=UTC)
    assert problems(ECOO, subs, ("<ExpiryDate>2027-02-22<", "<ExpiryDate>2029-02-28<"), now=later) == []
    assert only(ECOO, subs, ("<ExpiryDate>2027-02-22<", "<ExpiryDate>2029-03-01<"), now=later).path.endswith(
        "ExpiryDate"
    )


def test_rvc_criterion_needs_percentage() -> None:
    p = only(ECOO, ("<RegionalValueContentPercent>46.5</RegionalValueContentPercent>", ""))
    assert p.path == "/Envelope/Body/CertificateOfOrigin/GoodsItem[1]/OriginCriterionCode"


def test_rvc_of_exactly_40_qualifies() -> None:
    assert problems(ECOO, ("<RegionalValueContentPercent>46.5<", "<RegionalValueContentPercent>40<")) == []


def test_acdd_container_check_digit() -> None:
    p = only(ACDD, ("<ContainerID>TCNU8823417<", "<ContainerID>TCNU8823418<"))
    assert p.path == "/Envelope/Body/ACDD/ContainerID[2]"


def test_acdd_item_count() -> None:
    assert "GoodsItemQuantity is 3 but 2" in only(ACDD, ("<GoodsItemQuantity>2<", "<GoodsItemQuantity>3<")).reason


# --- ACK -----------------------------------------------------------------------------------


def test_rejected_ack_with_error_is_fine_and_received_ack_in_future_is_not() -> None:
    assert problems(ACK_REJECTED) == []
    tz = timezone(timedelta(hours=7))
    p = only(ACK_RECEIVED, now=datetime(2026, 2, 24, 21, 0, tzinfo=tz))
    assert p.path == "/Envelope/Body/Acknowledgement/IssueDateTime"


# --- robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.glob("*/invalid/*.xml")))
def test_rules_never_raise_even_on_schema_invalid_payloads(example: str) -> None:
    check(payload(example), now=NOW)


@pytest.mark.parametrize("root", sorted(RULES))
def test_rules_never_raise_on_an_empty_or_garbled_root(root: str) -> None:
    assert check(etree.Element(root), now=NOW) == []
    garbled = etree.fromstring(
        f"<r:{root.rpartition('}')[2]} xmlns:r='{root[1:].partition('}')[0]}'>"
        "<r:GoodsItemQuantity>x</r:GoodsItemQuantity><r:IssueDateTime>2026-13-45T99:00:00</r:IssueDateTime>"
        "<r:ExpiryDate>soon</r:ExpiryDate><r:StatusCode>Rejected</r:StatusCode><r:GoodsItem/>"
        f"</r:{root.rpartition('}')[2]}>"
    )
    check(garbled, now=NOW)
