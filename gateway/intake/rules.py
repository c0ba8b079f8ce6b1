"""Business rules that XSD 1.0 cannot express, one small function per payload root.

The schema already guarantees structure, types and code-list shapes; what it cannot say is
that numbers agree with each other (declared item count, invoice and customs-value totals,
duty arithmetic), that dates are plausible (not in the future, gate-out after gate-in,
certificate validity) or that one element requires another depending on a value (a
Rejected response carries errors, an import names the importer's tax id). Every customs
system checks these, and a partner would otherwise learn about them only from a rejection
hours later at the backend.

Rules run only on payloads that passed their schema (see `gateway.intake.validation.Validator`),
so they may assume required elements exist and values have their lexical types; they still
never raise on odd input, because a rule crash would turn a partner's 422 into our 500.
They are pure: `now` is passed in, nothing is read from the clock, disk or network.

Each problem names the element's line, its readable path (the same format the schema
errors use) and a sentence saying what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from lxml import etree

from gateway.errors import Problem
from gateway.intake.validation import readable_path

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a timestamp may be before it is refused: senders' clocks drift."""

_EARLIEST_OFFSET = timedelta(hours=14)
"""A bare date is 'today' somewhere until UTC+14 (Kiribati) has moved on to the next day."""

CENT = Decimal("0.01")
"""Rounding allowance per summed line: each line may have been rounded to the cent."""

DUTY_TOLERANCE = Decimal("1")
"""Duty arithmetic may differ by one currency unit: VND duties are rounded to whole dong."""

MIN_RVC_PERCENT = Decimal("40")
"""ATIGA Article 28: regional value content of at least 40 % of the FOB value."""

ELEMENT = etree._Element


def _local(el: ELEMENT) -> str:
    tag = el.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _children(el: ELEMENT | None, name: str) -> list[ELEMENT]:
    """Children by local name in any namespace (payload and `cmn:` children alike).

    `iterchildren("{*}...")` matches in C: a Python loop over the children made the rules
    cost five times the schema validation of a CUSDEC.
    """
    return [] if el is None else list(el.iterchildren("{*}" + name))


def _child(el: ELEMENT | None, *names: str) -> ELEMENT | None:
    """Follow a path of local names; None as soon as one step is missing."""
    for name in names:
        if el is None:
            return None
        el = next(el.iterchildren("{*}" + name), None)
    return el


def _text(el: ELEMENT | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _decimal(el: ELEMENT | None) -> Decimal | None:
    try:
        return Decimal(_text(el)) if el is not None else None
    except InvalidOperation:
        return None


def _datetime(el: ELEMENT | None) -> datetime | None:
    try:
        value = datetime.fromisoformat(_text(el)) if el is not None else None
    except ValueError:  # e.g. more than 6 fractional digits or 24:00:00: the schema allows them
        return None
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


def _date(el: ELEMENT | None) -> date | None:
    try:
        return date.fromisoformat(_text(el)[:10]) if el is not None else None
    except ValueError:
        return None


@dataclass
class _Checker:
    """Collects problems for one payload; helpers are the rules shared by several types."""

    now: datetime
    problems: list[Problem] = field(default_factory=list)

    def report(self, el: ELEMENT, reason: str) -> None:
        line = el.sourceline if isinstance(el.sourceline, int) else None
        self.problems.append(Problem(line, None, readable_path(el), reason))

    def not_future(self, el: ELEMENT | None) -> None:
        """Timestamps and dates must not be later than now (plus clock skew)."""
        if el is None:
            return
        if "T" in _text(el):
            when = _datetime(el)
            if when is not None and when > self.now + CLOCK_SKEW:
                self.report(
                    el,
                    f"{_local(el)} {_text(el)} is in the future (gateway time {self._now_text()}); "
                    "send the time the event actually happened, with its UTC offset.",
                )
            return
        day = _date(el)
        if day is not None and day > (self.now.astimezone(UTC) + _EARLIEST_OFFSET).date():
            self.report(el, f"{_local(el)} {_text(el)} is in the future; dates must not be later than today.")

    def not_before(self, later: ELEMENT | None, earlier: ELEMENT | None, why: str) -> None:
        a, b = _datetime(later), _datetime(earlier)
        if later is not None and earlier is not None and a is not None and b is not None and a < b:
            self.report(later, f"{_local(later)} {_text(later)} is before {_local(earlier)} {_text(earlier)}; {why}")

    def count(self, declared: ELEMENT | None, items: list[ELEMENT], item_name: str) -> None:
        n = _decimal(declared)
        if declared is not None and n is not None and n != len(items):
            self.report(
                declared,
                f"{_local(declared)} is {_text(declared)} but {len(items)} {item_name} element(s) are listed; "
                f"set it to {len(items)} or list the missing items.",
            )

    def sequence(self, items: list[ELEMENT]) -> None:
        for position, item in enumerate(items, 1):
            seq = _child(item, "SequenceNumeric")
            if seq is not None and _decimal(seq) != position:
                self.report(
                    seq,
                    f"SequenceNumeric is {_text(seq)} but this is item {position}; "
                    "number items 1, 2, 3 ... in document order without gaps.",
                )
                return  # one renumbering fixes them all; don't repeat the same advice per item

    def total(self, declared: ELEMENT | None, parts: list[ELEMENT | None], what: str) -> None:
        """`declared` must equal the sum of `parts`, in the same currency or unit."""
        if declared is None:
            return
        unit_attr = "currencyID" if declared.get("currencyID") is not None else "unitCode"
        unit = declared.get(unit_attr)
        present = [p for p in parts if p is not None]
        for part in present:
            if part.get(unit_attr) != unit:
                self.report(
                    part,
                    f"{_local(part)} is in {part.get(unit_attr)} but {_local(declared)} is in {unit}; "
                    f"give every {what} in {unit}.",
                )
                return
        total = _decimal(declared)
        values = [_decimal(p) for p in present]
        if total is None or any(v is None for v in values):
            return
        computed = sum((v for v in values if v is not None), Decimal(0))
        if abs(total - computed) > CENT * max(1, len(values)):
            self.report(
                declared,
                f"{_local(declared)} is {_text(declared)} {unit} but the {what}s add up to {computed} {unit}; "
                "correct the total or the item amounts.",
            )

    def containers(self, containers: Iterable[ELEMENT], *, sealed: bool) -> None:
        seen: set[str] = set()
        for container in containers:
            id_el = _child(container, "ID") if _local(container) != "ContainerID" else container
            if id_el is None:
                continue
            number = _text(id_el)
            if number in seen:
                self.report(id_el, f"Container {number} is listed twice; list each container once.")
            seen.add(number)
            expected = iso6346_check_digit(number[:10])
            if expected is not None and number[10:] != str(expected):
                self.report(
                    id_el,
                    f"Container number {number} fails the ISO 6346 check digit (expected {expected} as the "
                    "last digit); check the number against the container's door.",
                )
            if sealed and _text(_child(container, "FullnessCode")) == "FULL" and not _children(container, "Seal"):
                self.report(container, f"Full container {number} has no Seal; give the seal number(s) on it.")

    def _now_text(self) -> str:
        return self.now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso6346_check_digit(prefix: str) -> int | None:
    """Check digit of the first 10 characters of an ISO 6346 container number, or None."""
    if len(prefix) != 10:
        return None
    total = 0
    for i, ch in enumerate(prefix):
        if ch.isdigit():
            value = int(ch)
        elif "A" <= ch <= "Z":
            value = 10 + ord(ch) - ord("A")
            value += (value - 1) // 10  # letter values skip 11, 22 and 33 (multiples of 11)
        else:
            return None
        total += value << i
    return total % 11 % 10


def _declaration(c: _Checker, d: ELEMENT) -> None:
    items = _children(d, "GoodsItem")
    c.count(_child(d, "GoodsItemQuantity"), items, "GoodsItem")
    c.sequence(items)
    issued = _child(d, "IssueDateTime")
    c.not_future(issued)
    c.not_future(_child(d, "TransportDocument", "IssueDate"))
    invoice_date, issued_at = _child(d, "Invoice", "IssueDate"), _datetime(issued)
    day = _date(invoice_date)
    if invoice_date is not None and issued_at is not None and day is not None and day > issued_at.date():
        c.report(
            invoice_date,
            f"Invoice IssueDate {day} is after the declaration's IssueDateTime; "
            "a declaration can only cite an invoice that already exists.",
        )
    kind = _text(_child(d, "TypeCode"))
    trader = {"IM": "Importer", "EX": "Exporter"}.get(kind)
    party = _child(d, trader) if trader else None
    if party is not None and _child(party, "TaxID") is None:
        c.report(
            party,
            f"An {'import' if kind == 'IM' else 'export'} declaration must give the {trader}'s "
            f"TaxID: the domestic trader is liable for the duties; add {trader}/TaxID.",
        )
    c.total(_child(d, "Invoice", "TotalAmount"), [_child(i, "InvoiceAmount") for i in items], "GoodsItem InvoiceAmount")
    c.total(
        _child(d, "TotalCustomsValueAmount"),
        [_child(i, "CustomsValueAmount") for i in items],
        "GoodsItem CustomsValueAmount",
    )
    gross = [_child(i, "GrossMassMeasure") for i in items]
    if all(g is not None for g in gross):
        c.total(_child(d, "TotalGrossMassMeasure"), gross, "GoodsItem GrossMassMeasure")
    fees = [fee for i in items for fee in _children(i, "DutyTaxFee")]
    c.total(_child(d, "TotalDutyTaxAmount"), [_child(f, "AssessedAmount") for f in fees], "DutyTaxFee AssessedAmount")
    for fee in fees:
        _duty(c, fee)
    for item in items:
        net, gross_el = _child(item, "NetMassMeasure"), _child(item, "GrossMassMeasure")
        n, g = _decimal(net), _decimal(gross_el)
        same_unit = net is not None and gross_el is not None and net.get("unitCode") == gross_el.get("unitCode")
        if net is not None and same_unit and n is not None and g is not None and n > g:
            c.report(net, f"NetMassMeasure {n} is more than GrossMassMeasure {g}; net mass excludes packaging.")
        pref = _child(item, "PreferenceCode")
        if pref is not None and _text(pref) != "MFN" and _child(item, "OriginCertificateID") is None:
            c.report(
                pref,
                f"A {_text(pref)} preference needs the certificate of origin; add OriginCertificateID or claim MFN.",
            )


def _duty(c: _Checker, fee: ELEMENT) -> None:
    base_el, assessed_el = _child(fee, "TaxBaseAmount"), _child(fee, "AssessedAmount")
    base, rate, assessed = _decimal(base_el), _decimal(_child(fee, "RatePercent")), _decimal(assessed_el)
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
            f"= {expected.quantize(CENT)}; recompute the {_text(_child(fee, 'TypeCode'))} amount.",
        )


def _response(c: _Checker, r: ELEMENT) -> None:
    status_el = _child(r, "StatusCode")
    status, errors = _text(status_el), _children(r, "Error")
    if status == "Rejected" and not errors and status_el is not None:
        c.report(status_el, "A Rejected response must carry at least one Error saying why; add Error elements.")
    if status != "Rejected":
        for name in ("DeclarationID", "InspectionChannelCode"):
            if _child(r, name) is None and status_el is not None:
                c.report(
                    status_el,
                    f"A response with StatusCode {status} must give {name}: the declarant needs it to proceed.",
                )
        for error in errors:
            c.report(
                error, f"A response with StatusCode {status} must not carry Error elements; use StatusCode Rejected."
            )
    for status_name, needed in (("Released", "ReleaseDateTime"), ("Cleared", "ClearanceDateTime")):
        if status == status_name and _child(r, needed) is None and status_el is not None:
            c.report(status_el, f"A response with StatusCode {status_name} must give {needed}.")
    stamps = [_child(r, n) for n in ("IssueDateTime", "AcceptanceDateTime", "ReleaseDateTime", "ClearanceDateTime")]
    for stamp in stamps:
        c.not_future(stamp)
    c.not_before(stamps[2], stamps[1], "goods cannot be released before the declaration is accepted.")
    c.not_before(stamps[3], stamps[2], "clearance completes after release.")


def _handover(c: _Checker, h: ELEMENT) -> None:
    containers = _children(h, "Container")
    c.count(_child(h, "ContainerQuantity"), containers, "Container")
    c.containers(containers, sealed=True)
    source, target = _child(h, "FromLocation", "ID"), _child(h, "ToLocation", "ID")
    if target is not None and _text(source) == _text(target):
        c.report(
            target,
            f"ToLocation {_text(target)} is the same as FromLocation; a handover moves goods between "
            "two different supervised locations.",
        )
    departure, arrival = _child(h, "DepartureDateTime"), _child(h, "ArrivalDateTime")
    for stamp in (_child(h, "IssueDateTime"), departure, arrival):
        c.not_future(stamp)
    c.not_before(arrival, departure, "goods arrive after they leave.")
    if arrival is not None and _child(h, "ReceivingOfficer") is None:
        c.report(arrival, "An ArrivalDateTime needs the ReceivingOfficer who checked the seals on arrival.")


def _gate_event(c: _Checker, g: ELEMENT) -> None:
    direction_el = _child(g, "DirectionCode")
    direction, event, gate_in = _text(direction_el), _child(g, "EventDateTime"), _child(g, "GateInDateTime")
    containers = _children(g, "Container")
    c.not_future(event)
    c.containers(containers, sealed=True)
    if direction == "IN" and gate_in is not None:
        c.report(gate_in, "GateInDateTime belongs on OUT events only; on an IN event EventDateTime is the gate-in.")
    if direction == "OUT" and direction_el is not None:
        if gate_in is None:
            c.report(direction_el, "An OUT event must give GateInDateTime, when the same goods entered.")
        c.not_before(event, gate_in, "a gate-out cannot happen before the gate-in of the same goods.")
        full = any(_text(_child(k, "FullnessCode")) == "FULL" for k in containers)
        if full and _child(g, "DeclarationID") is None:
            c.report(direction_el, "Full containers may leave only under a released declaration; add DeclarationID.")


def _certificate(c: _Checker, cert: ELEMENT) -> None:
    issued_el, expiry_el = _child(cert, "IssueDateTime"), _child(cert, "ExpiryDate")
    c.not_future(issued_el)
    issued, expiry = _datetime(issued_el), _date(expiry_el)
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
    items = _children(cert, "GoodsItem")
    c.sequence(items)
    for item in items:
        criterion = _child(item, "OriginCriterionCode")
        if criterion is None or _text(criterion) != "RVC":
            continue
        rvc_el = _child(item, "RegionalValueContentPercent")
        rvc = _decimal(rvc_el)
        if rvc_el is None or rvc is None:
            c.report(criterion, "Origin criterion RVC needs RegionalValueContentPercent.")
        elif rvc < MIN_RVC_PERCENT:
            c.report(
                rvc_el,
                f"Regional value content {rvc} % is below the ATIGA minimum of {MIN_RVC_PERCENT} %; "
                "the goods do not qualify under RVC.",
            )


def _distinct_countries(c: _Checker, doc: ELEMENT) -> None:
    exporting, importing = _child(doc, "ExportingCountryCode"), _child(doc, "ImportingCountryCode")
    if importing is not None and _text(exporting) == _text(importing):
        c.report(
            importing,
            f"ImportingCountryCode {_text(importing)} equals ExportingCountryCode; an ASEAN exchange "
            "is between two different member states.",
        )


def _acdd(c: _Checker, a: ELEMENT) -> None:
    c.not_future(_child(a, "IssueDateTime"))
    c.not_future(_child(a, "ExportDeclarationDate"))
    _distinct_countries(c, a)
    discharge, importing = _child(a, "DischargeLocationID"), _text(_child(a, "ImportingCountryCode"))
    if discharge is not None and importing and not _text(discharge).startswith(importing):
        c.report(
            discharge,
            f"DischargeLocationID {_text(discharge)} is not in the importing country {importing}; "
            "give the UN/LOCODE where the goods are unloaded in the importing member state.",
        )
    c.containers(_children(a, "ContainerID"), sealed=False)
    items = _children(a, "GoodsItem")
    c.count(_child(a, "GoodsItemQuantity"), items, "GoodsItem")
    c.sequence(items)
    c.total(
        _child(a, "InvoiceAmount"),
        [_child(i, "StatisticalValueAmount") for i in items],
        "GoodsItem StatisticalValueAmount",
    )
    c.total(
        _child(a, "TotalGrossMassMeasure"), [_child(i, "GrossMassMeasure") for i in items], "GoodsItem GrossMassMeasure"
    )


def _acknowledgement(c: _Checker, ack: ELEMENT) -> None:
    status_el = _child(ack, "StatusCode")
    status, errors = _text(status_el), _children(ack, "Error")
    c.not_future(_child(ack, "IssueDateTime"))
    if status == "Rejected" and not errors and status_el is not None:
        c.report(status_el, "A Rejected acknowledgement must carry at least one Error saying why; add Error elements.")
    if status != "Rejected":
        for error in errors:
            c.report(
                error,
                f"An acknowledgement with StatusCode {status} must not carry Error elements; use StatusCode Rejected.",
            )


RULES: dict[str, Callable[[_Checker, ELEMENT], None]] = {
    "{urn:swgw:customs:declaration:1}Declaration": _declaration,
    "{urn:swgw:customs:response:1}DeclarationResponse": _response,
    "{urn:swgw:cargo:handover:1}CargoHandover": _handover,
    "{urn:swgw:cargo:gate-event:1}GateEvent": _gate_event,
    "{urn:swgw:asean:eco:1}CertificateOfOrigin": _certificate,
    "{urn:swgw:asean:acdd:1}ACDD": _acdd,
    "{urn:swgw:common:ack:1}Acknowledgement": _acknowledgement,
}
"""Payload root (Clark notation) → its rules. Roots not listed have no business rules."""


def check(payload: etree._Element, *, now: datetime) -> list[Problem]:
    """Every business-rule problem of a schema-valid payload, in document order per rule.

    `now` should be timezone-aware; a naive value is taken as UTC.
    """
    rules = RULES.get(payload.tag) if isinstance(payload.tag, str) else None
    if rules is None:
        return []
    checker = _Checker(now if now.tzinfo is not None else now.replace(tzinfo=UTC))
    rules(checker, payload)
    return checker.problems
