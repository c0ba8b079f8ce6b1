"""Rules of the message types every family shares: the acknowledgement (ACK).

A Rejected acknowledgement says why, in Error elements; any other status carries none.
"""

from __future__ import annotations

from gateway.intake.rules.checker import Checker, Element, Rule, child, children, text


def _acknowledgement(c: Checker, ack: Element) -> None:
    status_el = child(ack, "StatusCode")
    status, errors = text(status_el), children(ack, "Error")
    c.not_future(child(ack, "IssueDateTime"))
    if status == "Rejected" and not errors and status_el is not None:
        c.report(status_el, "A Rejected acknowledgement must carry at least one Error saying why; add Error elements.")
    if status != "Rejected":
        for error in errors:
            c.report(
                error,
                f"An acknowledgement with StatusCode {status} must not carry Error elements; use StatusCode Rejected.",
            )


RULES: dict[str, Rule] = {
    "{urn:swgw:common:ack:1}Acknowledgement": _acknowledgement,
}
