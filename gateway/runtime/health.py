"""/healthz (the process answers) and /readyz (it can take messages: broker + schemas).

/readyz answers 503 while not ready, with a JSON body an operator can read with curl:
broker state, compiled schemas and, when delivery runs here, each destination's circuit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.broker.publisher import Broker
from gateway.intake.validation import Validator

DestinationStates = Callable[[], dict[str, dict[str, Any]]]


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def readiness(broker: Broker, validator: Validator, destinations: DestinationStates | None) -> dict[str, Any]:
    broker_state = "blocked" if broker.ready and broker.blocked else ("connected" if broker.ready else "down")
    detail: dict[str, Any] = {
        "ready": broker_state == "connected",
        "broker": {
            "state": broker_state,
            **({"error": broker.topology_error} if broker.topology_error else {}),
        },
        "schemas": {"compiled": sorted(validator.types), "envelope": True},
    }
    if destinations is not None:
        detail["destinations"] = destinations()
    return detail
