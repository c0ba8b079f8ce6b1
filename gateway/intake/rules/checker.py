"""What the rules of every message family share: reading the payload, and the checks they reuse.

The readers take an element that may be None (a missing optional element) and never raise:
`child(el, "A", "B")` follows a path of local names, `text`, `decimal_of`, `datetime_of` and
`date_of` give "" or None for anything odd. The Checker collects one payload's problems,
each naming the element's line and readable path (the format the schema errors use) and
saying what to change; its methods are the rules several families apply alike: nothing in
the future, one time not before another, declared counts and totals that add up, container
numbers with their ISO 6346 check digit.
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

Element = etree._Element


def local_name(el: Element) -> str:
    tag = el.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def children(el: Element | None, name: str) -> list[Element]:
    """Children by local name in any namespace (payload and `cmn:` children alike).

    `iterchildren("{*}...")` matches in C: a Python loop over the children made the rules
    cost five times the schema validation of a CUSDEC.
    """
    return [] if el is None else list(el.iterchildren("{*}" + name))


def child(el: Element | None, *names: str) -> Element | None:
    """Follow a path of local names; None as soon as one step is missing."""
    for name in names:
        if el is None:
            return None
        el = next(el.iterchildren("{*}" + name), None)
    return el


def text(el: Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def decimal_of(el: Element | None) -> Decimal | None:
    try:
        return Decimal(text(el)) if el is not None else None
    except InvalidOperation:
        return None


def datetime_of(el: Element | None) -> datetime | None:
    try:
        value = datetime.fromisoformat(text(el)) if el is not None else None
    except ValueError:  # e.g. more than 6 fractional digits or 24:00:00: the schema allows them
        return None
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


def date_of(el: Element | None) -> date | None:
    try:
        return date.fromisoformat(text(el)[:10]) if el is not None else None
    except ValueError:
        return None


@dataclass
class Checker:
    """Collects problems for one payload; helpers are the rules shared by several types."""

    now: datetime
    problems: list[Problem] = field(default_factory=list)

    def report(self, el: Element, reason: str) -> None:
        line = el.sourceline if isinstance(el.sourceline, int) else None
        self.problems.append(Problem(line, None, readable_path(el), reason))

    def not_future(self, el: Element | None) -> None:
        """Timestamps and dates must not be later than now (plus clock skew)."""
        if el is None:
            return
        if "T" in text(el):
            when = datetime_of(el)
            if when is not None and when > self.now + CLOCK_SKEW:
                self.report(
                    el,
                    f"{local_name(el)} {text(el)} is in the future (gateway time {self._nowtext()}); "
                    "send the time the event actually happened, with its UTC offset.",
                )
            return
        day = date_of(el)
        if day is not None and day > (self.now.astimezone(UTC) + _EARLIEST_OFFSET).date():
            self.report(el, f"{local_name(el)} {text(el)} is in the future; dates must not be later than today.")

    def not_before(self, later: Element | None, earlier: Element | None, why: str) -> None:
        a, b = datetime_of(later), datetime_of(earlier)
        if later is not None and earlier is not None and a is not None and b is not None and a < b:
            self.report(
                later, f"{local_name(later)} {text(later)} is before {local_name(earlier)} {text(earlier)}; {why}"
            )

    def count(self, declared: Element | None, items: list[Element], item_name: str) -> None:
        n = decimal_of(declared)
        if declared is not None and n is not None and n != len(items):
            self.report(
                declared,
                f"{local_name(declared)} is {text(declared)} but {len(items)} {item_name} element(s) are listed; "
                f"set it to {len(items)} or list the missing items.",
            )

    def sequence(self, items: list[Element]) -> None:
        for position, item in enumerate(items, 1):
            seq = child(item, "SequenceNumeric")
            if seq is not None and decimal_of(seq) != position:
                self.report(
                    seq,
                    f"SequenceNumeric is {text(seq)} but this is item {position}; "
                    "number items 1, 2, 3 ... in document order without gaps.",
                )
                return  # one renumbering fixes them all; don't repeat the same advice per item

    def total(self, declared: Element | None, parts: list[Element | None], what: str) -> None:
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
                    f"{local_name(part)} is in {part.get(unit_attr)} but {local_name(declared)} is in {unit}; "
                    f"give every {what} in {unit}.",
                )
                return
        total = decimal_of(declared)
        values = [decimal_of(p) for p in present]
        if total is None or any(v is None for v in values):
            return
        computed = sum((v for v in values if v is not None), Decimal(0))
        if abs(total - computed) > CENT * max(1, len(values)):
            self.report(
                declared,
                f"{local_name(declared)} is {text(declared)} {unit} but the {what}s add up to {computed} {unit}; "
                "correct the total or the item amounts.",
            )

    def containers(self, containers: Iterable[Element], *, sealed: bool) -> None:
        seen: set[str] = set()
        for container in containers:
            id_el = child(container, "ID") if local_name(container) != "ContainerID" else container
            if id_el is None:
                continue
            number = text(id_el)
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
            if sealed and text(child(container, "FullnessCode")) == "FULL" and not children(container, "Seal"):
                self.report(container, f"Full container {number} has no Seal; give the seal number(s) on it.")

    def _nowtext(self) -> str:
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


Rule = Callable[[Checker, Element], None]
"""The rules of one payload root: report every problem of the payload on the Checker."""
