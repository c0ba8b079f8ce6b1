"""Cargo rules: handovers between supervised locations (HANDOVER) and terminal gate events (GATEEVT).

Containers are listed once, with a valid ISO 6346 check digit and a seal when full; goods
move between two different places, arrive after they leave, and leave a gate only after
they entered it, full containers only under a released declaration.
"""

from __future__ import annotations

from gateway.intake.rules.checker import Checker, Element, Rule, child, children, text


def _handover(c: Checker, h: Element) -> None:
    containers = children(h, "Container")
    c.count(child(h, "ContainerQuantity"), containers, "Container")
    c.containers(containers, sealed=True)
    source, target = child(h, "FromLocation", "ID"), child(h, "ToLocation", "ID")
    if target is not None and text(source) == text(target):
        c.report(
            target,
            f"ToLocation {text(target)} is the same as FromLocation; a handover moves goods between "
            "two different supervised locations.",
        )
    departure, arrival = child(h, "DepartureDateTime"), child(h, "ArrivalDateTime")
    for stamp in (child(h, "IssueDateTime"), departure, arrival):
        c.not_future(stamp)
    c.not_before(arrival, departure, "goods arrive after they leave.")
    if arrival is not None and child(h, "ReceivingOfficer") is None:
        c.report(arrival, "An ArrivalDateTime needs the ReceivingOfficer who checked the seals on arrival.")


def _gate_event(c: Checker, g: Element) -> None:
    direction_el = child(g, "DirectionCode")
    direction, event, gate_in = text(direction_el), child(g, "EventDateTime"), child(g, "GateInDateTime")
    containers = children(g, "Container")
    c.not_future(event)
    c.containers(containers, sealed=True)
    if direction == "IN" and gate_in is not None:
        c.report(gate_in, "GateInDateTime belongs on OUT events only; on an IN event EventDateTime is the gate-in.")
    if direction == "OUT" and direction_el is not None:
        if gate_in is None:
            c.report(direction_el, "An OUT event must give GateInDateTime, when the same goods entered.")
        c.not_before(event, gate_in, "a gate-out cannot happen before the gate-in of the same goods.")
        full = any(text(child(k, "FullnessCode")) == "FULL" for k in containers)
        if full and child(g, "DeclarationID") is None:
            c.report(direction_el, "Full containers may leave only under a released declaration; add DeclarationID.")


RULES: dict[str, Rule] = {
    "{urn:swgw:cargo:handover:1}CargoHandover": _handover,
    "{urn:swgw:cargo:gate-event:1}GateEvent": _gate_event,
}
