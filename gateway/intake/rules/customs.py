"""Customs rules: the declaration (CUSDEC) and the customs response to it (CUSRES).

A declaration's numbers must agree (item count and sequence, invoice, customs-value, mass
and duty totals, each duty's arithmetic), its dates must be plausible, and an import or
export names the liable domestic trader. A response says what the declarant needs for its
status, and its timestamps follow the order of the procedure.
"""

from __future__ import annotations

from decimal import Decimal

from gateway.intake.rules.checker import (
    CENT,
    Checker,
    Element,
    Rule,
    child,
    children,
    date_of,
    datetime_of,
    decimal_of,
    text,
)

DUTY_TOLERANCE = Decimal("1")
"""Duty arithmetic may differ by one currency unit: VND duties are rounded to whole dong."""


def _declaration(c: Checker, d: Element) -> None:
    items = children(d, "GoodsItem")
    c.count(child(d, "GoodsItemQuantity"), items, "GoodsItem")
    c.sequence(items)
    issued = child(d, "IssueDateTime")
    c.not_future(issued)
    c.not_future(child(d, "TransportDocument", "IssueDate"))
    invoice_date, issued_at = child(d, "Invoice", "IssueDate"), datetime_of(issued)
    day = date_of(invoice_date)
    if invoice_date is not None and issued_at is not None and day is not None and day > issued_at.date():
        c.report(
            invoice_date,
            f"Invoice IssueDate {day} is after the declaration's IssueDateTime; "
            "a declaration can only cite an invoice that already exists.",
        )
    kind = text(child(d, "TypeCode"))
    trader = {"IM": "Importer", "EX": "Exporter"}.get(kind)
    party = child(d, trader) if trader else None
    if party is not None and child(party, "TaxID") is None:
        c.report(
            party,
            f"An {'import' if kind == 'IM' else 'export'} declaration must give the {trader}'s "
            f"TaxID: the domestic trader is liable for the duties; add {trader}/TaxID.",
        )
    c.total(child(d, "Invoice", "TotalAmount"), [child(i, "InvoiceAmount") for i in items], "GoodsItem InvoiceAmount")
    c.total(
        child(d, "TotalCustomsValueAmount"),
        [child(i, "CustomsValueAmount") for i in items],
        "GoodsItem CustomsValueAmount",
    )
    gross = [child(i, "GrossMassMeasure") for i in items]
    if all(g is not None for g in gross):
        c.total(child(d, "TotalGrossMassMeasure"), gross, "GoodsItem GrossMassMeasure")
    fees = [fee for i in items for fee in children(i, "DutyTaxFee")]
    c.total(child(d, "TotalDutyTaxAmount"), [child(f, "AssessedAmount") for f in fees], "DutyTaxFee AssessedAmount")
    for fee in fees:
        _duty(c, fee)
    for item in items:
        net, gross_el = child(item, "NetMassMeasure"), child(item, "GrossMassMeasure")
        n, g = decimal_of(net), decimal_of(gross_el)
        same_unit = net is not None and gross_el is not None and net.get("unitCode") == gross_el.get("unitCode")
        if net is not None and same_unit and n is not None and g is not None and n > g:
            c.report(net, f"NetMassMeasure {n} is more than GrossMassMeasure {g}; net mass excludes packaging.")
        pref = child(item, "PreferenceCode")
        if pref is not None and text(pref) != "MFN" and child(item, "OriginCertificateID") is None:
            c.report(
                pref,
                f"A {text(pref)} preference needs the certificate of origin; add OriginCertificateID or claim MFN.",
            )


def _duty(c: Checker, fee: Element) -> None:
    base_el, assessed_el = child(fee, "TaxBaseAmount"), child(fee, "AssessedAmount")
    base, rate, assessed = decimal_of(base_el), decimal_of(child(fee, "RatePercent")), decimal_of(assessed_el)
    if base_el is None or assessed_el is None or base is None or rate is None or assessed is None:
        return
    if base_el.get("currencyID") != assessed_el.get("currencyID"):
        c.report(assessed_el, "AssessedAmount and TaxBaseAmount must be in the same currency.")
        return
    expected = base * rate / 100
    if abs(assessed - expected) > DUTY_TOLERANCE:
        c.report(
            assessed_el,
            f"AssessedAmount {assessed} does not equal TaxBaseAmount {base} x RatePercent {rate} % "
            f"= {expected.quantize(CENT)}; recompute the {text(child(fee, 'TypeCode'))} amount.",
        )


def _response(c: Checker, r: Element) -> None:
    status_el = child(r, "StatusCode")
    status, errors = text(status_el), children(r, "Error")
    if status == "Rejected" and not errors and status_el is not None:
        c.report(status_el, "A Rejected response must carry at least one Error saying why; add Error elements.")
    if status != "Rejected":
        for name in ("DeclarationID", "InspectionChannelCode"):
            if child(r, name) is None and status_el is not None:
                c.report(
                    status_el,
                    f"A response with StatusCode {status} must give {name}: the declarant needs it to proceed.",
                )
        for error in errors:
            c.report(
                error, f"A response with StatusCode {status} must not carry Error elements; use StatusCode Rejected."
            )
    for status_name, needed in (("Released", "ReleaseDateTime"), ("Cleared", "ClearanceDateTime")):
        if status == status_name and child(r, needed) is None and status_el is not None:
            c.report(status_el, f"A response with StatusCode {status_name} must give {needed}.")
    stamps = [child(r, n) for n in ("IssueDateTime", "AcceptanceDateTime", "ReleaseDateTime", "ClearanceDateTime")]
    for stamp in stamps:
        c.not_future(stamp)
    c.not_before(stamps[2], stamps[1], "goods cannot be released before the declaration is accepted.")
    c.not_before(stamps[3], stamps[2], "clearance completes after release.")


RULES: dict[str, Rule] = {
    "{urn:swgw:customs:declaration:1}Declaration": _declaration,
    "{urn:swgw:customs:response:1}DeclarationResponse": _response,
}
