"""Business rules that XSD 1.0 cannot express, one module per message family.

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

The files: checker.py (the Checker, the payload readers and the checks families share),
then one module per family, each with a RULES table of its payload roots: customs.py
(CUSDEC, CUSRES), cargo.py (HANDOVER, GATEEVT), asean.py (ECOO, ACDD), common.py (ACK).
A new message type adds its rules to its family's module, a new family adds a module and
one line below.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lxml import etree

from gateway.errors import Problem
from gateway.intake.rules import asean, cargo, common, customs
from gateway.intake.rules.checker import CLOCK_SKEW, Checker, Rule, iso6346_check_digit

__all__ = ["CLOCK_SKEW", "RULES", "check", "iso6346_check_digit"]

RULES: dict[str, Rule] = {**customs.RULES, **cargo.RULES, **asean.RULES, **common.RULES}
"""Payload root (Clark notation) → its rules. Roots not listed have no business rules."""


def check(payload: etree._Element, *, now: datetime) -> list[Problem]:
    """Every business-rule problem of a schema-valid payload, in document order per rule.

    `now` should be timezone-aware; a naive value is taken as UTC.
    """
    rules = RULES.get(payload.tag) if isinstance(payload.tag, str) else None
    if rules is None:
        return []
    checker = Checker(now if now.tzinfo is not None else now.replace(tzinfo=UTC))
    rules(checker, payload)
    return checker.problems
