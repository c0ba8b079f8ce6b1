"""(To, MessageType) → destination: a pure lookup, no I/O.

An exact (to, type) route wins over a (to, "*") wildcard; nothing else matches. Routes are
validated against destinations and message types when the config is loaded, so a miss
here is always the partner's addressing, answered with 422.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import InvalidMessage
from gateway.settings.model import Route


class Router:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._table: dict[tuple[str, str], str] = {}
        for r in routes:
            self._table.setdefault((r.to, r.message_type), r.destination)

    def destination_for(self, to: str, message_type: str) -> str | None:
        return self._table.get((to, message_type)) or self._table.get((to, "*"))

    def route(self, to: str, message_type: str) -> str:
        """The destination, or the 422 partners get (the gateway and `swgw validate` alike)."""
        destination = self.destination_for(to, message_type)
        if destination is None:
            raise InvalidMessage(
                f"No route for To={to!r} and MessageType={message_type!r}; "
                "check the receiver id or ask the operator to add a route.",
                reason="no_route",
            )
        return destination
