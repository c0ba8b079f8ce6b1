"""ASEAN exchange rules: the e-ATIGA Form D certificate of origin (ECOO) and the ASEAN customs
declaration document (ACDD).

Both are between two different member states. A certificate is valid for at most 12 months
from its issue and a regional-value-content claim meets the ATIGA minimum; an ACDD unloads
in the importing country and its items add up to its totals.
"""

from __future__ import annotations

from decimal import Decimal

from gateway.intake.rules.checker import Checker, Element, Rule, child, children, date_of, datetime_of, decimal_of, text

MIN_RVC_PERCENT = Decimal("40")
"""ATIGA Article 28: regional value content of at least 40 % of the FOB value."""


def _certificate(c: Checker, cert: Element) -> None:
    issued_el, expiry_el = child(cert, "IssueDateTime"), child(cert, "ExpiryDate")
    c.not_future(issued_el)
    issued, expiry = datetime_of(issued_el), date_of(expiry_el)
    if expiry_el is not None and issued is not None and expiry is not None:
        start = issued.date()
        try:
            limit = start.replace(year=start.year + 1)
        except ValueError:  # issued on 29 February
            limit = start.replace(year=start.year + 1, day=28)
        if not start < expiry <= limit:
            c.report(
                expiry_el,
                f"ExpiryDate {expiry} must be after the issue date {start} and at most 12 months "
                f"after it (no later than {limit}).",
            )
    _distinct_countries(c, cert)
    items = children(cert, "GoodsItem")
    c.sequence(items)
    for item in items:
        criterion = child(item, "OriginCriterionCode")
        if criterion is None or text(criterion) != "RVC":
            continue
        rvc_el = child(item, "RegionalValueContentPercent")
        rvc = decimal_of(rvc_el)
        if rvc_el is None or rvc is None:
            c.report(criterion, "Origin criterion RVC needs RegionalValueContentPercent.")
        elif rvc < MIN_RVC_PERCENT:
            c.report(
                rvc_el,
                f"Regional value content {rvc} % is below the ATIGA minimum of {MIN_RVC_PERCENT} %; "
                "the goods do not qualify under RVC.",
            )


def _distinct_countries(c: Checker, doc: Element) -> None:
    exporting, importing = child(doc, "ExportingCountryCode"), child(doc, "ImportingCountryCode")
    if importing is not None and text(exporting) == text(importing):
        c.report(
            importing,
            f"ImportingCountryCode {text(importing)} equals ExportingCountryCode; an ASEAN exchange "
            "is between two different member states.",
        )


def _acdd(c: Checker, a: Element) -> None:
    c.not_future(child(a, "IssueDateTime"))
    c.not_future(child(a, "ExportDeclarationDate"))
    _distinct_countries(c, a)
    discharge, importing = child(a, "DischargeLocationID"), text(child(a, "ImportingCountryCode"))
    if discharge is not None and importing and not text(discharge).startswith(importing):
        c.report(
            discharge,
            f"DischargeLocationID {text(discharge)} is not in the importing country {importing}; "
            "give the UN/LOCODE where the goods are unloaded in the importing member state.",
        )
    c.containers(children(a, "ContainerID"), sealed=False)
    items = children(a, "GoodsItem")
    c.count(child(a, "GoodsItemQuantity"), items, "GoodsItem")
    c.sequence(items)
    c.total(
        child(a, "InvoiceAmount"),
        [child(i, "StatisticalValueAmount") for i in items],
        "GoodsItem StatisticalValueAmount",
    )
    c.total(
        child(a, "TotalGrossMassMeasure"), [child(i, "GrossMassMeasure") for i in items], "GoodsItem GrossMassMeasure"
    )


RULES: dict[str, Rule] = {
    "{urn:swgw:asean:eco:1}CertificateOfOrigin": _certificate,
    "{urn:swgw:asean:acdd:1}ACDD": _acdd,
}
