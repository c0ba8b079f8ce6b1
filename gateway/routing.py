"""(To, MessageType) → destination: a pure lookup, no I/O.

An exact (to, type) route wins over a (to, "*") wildcard; nothing else matches. Routes are
validated against destinations and message types when the config is loaded, so a miss
here is always the partner's addressing, answered with 422.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import Route


class Router:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._table: dict[tuple[str, str], str] = {}
        for r in routes:
            self._table.setdefault((r.to, r.message_type), r.destination)

    def destination_for(self, to: str, message_type: str) -> str | None:
        return self._table.get((to, message_type)) or self._table.get((to, "*"))
