"""The ops console's paths (gateway/operations/console_api.py says what each route does).

The console's files (`/console`, `/console/{name}`) are described deliberately with no
security: a browser cannot send the bearer token on a navigation, and they hold no data.
The routes under `/admin/` need the admin token like the rest of the admin API; a bad or
missing window parameter is a 400 `bad_parameter` naming it, a journal that is off a 404
`journal_disabled`, one that does not answer a 503.
"""

from __future__ import annotations

from typing import Any

from gateway.runtime.openapi.common import NULLABLE_STRING, TIMESTAMP, json_response, obj, problems

PERIOD = obj(
    ["opened_at", "closed_at", "duration_s", "open_before_window", "still_open"],
    {
        "opened_at": TIMESTAMP,
        "closed_at": TIMESTAMP,
        "duration_s": {"type": "number"},
        "open_before_window": {"type": "boolean", "description": "It opened before `since` (opened_at is since)."},
        "still_open": {"type": "boolean", "description": "Still open at `until` or now (closed_at is that time)."},
    },
)
COUNTS: dict[str, Any] = {
    "received": {"type": "integer"},
    "delivered": {"type": "integer"},
    "parked": {"type": "integer"},
    "pending": {"type": "integer"},
    "duplicates": {"type": "integer"},
    "conflicts": {"type": "integer"},
    "longest_s": {"type": ["number", "null"]},
    "longest_message_id": NULLABLE_STRING,
}
SCHEMAS: dict[str, Any] = {
    "CircuitOpenPeriod": PERIOD,
    "OutageTimeline": obj(
        ["since", "until", "as_of", "destinations"],
        {
            "since": TIMESTAMP,
            "until": TIMESTAMP,
            "as_of": TIMESTAMP,
            "destinations": {
                "type": "array",
                "items": obj(
                    ["id", "open"],
                    {
                        "id": {"type": "string"},
                        "open": {"type": "array", "items": {"$ref": "#/components/schemas/CircuitOpenPeriod"}},
                    },
                ),
            },
        },
    ),
    "OutageReport": obj(
        ["since", "until", "destination", "as_of", "groups", "circuit_open", "total"],
        {
            "since": TIMESTAMP,
            "until": TIMESTAMP,
            "destination": NULLABLE_STRING,
            "as_of": TIMESTAMP,
            "groups": {
                "type": "array",
                "items": obj(
                    ["destination", "message_type", *COUNTS],
                    {"destination": {"type": "string"}, "message_type": {"type": "string"}, **COUNTS},
                ),
            },
            "circuit_open": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/CircuitOpenPeriod"}},
            },
            "total": obj(list(COUNTS), COUNTS),
        },
    ),
}
HTML_HEADERS = {
    name: {"schema": {"type": "string"}}
    for name in ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy", "X-Content-Type-Options")
}


def _window(operation_id: str, summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    def q(name: str, text: str, required: bool) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required, "description": text, "schema": {"type": "string"}}

    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "tags": ["console"],
            "parameters": [
                q("since", "Received at or after (ISO-8601 with an offset).", True),
                q("until", "Received before (ISO-8601 with an offset).", True),
                q("destination", "One destination id (default: all).", False),
            ],
            "responses": {"200": ok, **problems(400, 401, 403, 404, 503)},
        }
    }


def _file(operation_id: str, summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    types = {t: {"schema": {"type": "string"}} for t in ("text/html", "text/css", "text/javascript")}
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "tags": ["console"],
            "security": [],
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "The file, with strict security headers.",
                    "content": types,
                    "headers": HTML_HEADERS,
                },
                **problems(404),
            },
        }
    }


def paths() -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/console": _file("console", "The ops console (sign in with the admin token)", []),
        "/console/{name}": _file("consoleFile", "The console's stylesheet and ES modules", [name]),
        "/admin/outages": _window(
            "outageTimeline",
            "Circuit open periods per destination in a window (the outage timeline)",
            json_response("The periods, oldest first.", {"$ref": "#/components/schemas/OutageTimeline"}),
        ),
        "/admin/report": _window(
            "outageReport",
            "The outage report of a window: counts by status now, per destination and type, and open periods",
            json_response("The report (`swgw report --format json`).", {"$ref": "#/components/schemas/OutageReport"}),
        ),
        "/admin/report.csv": _window(
            "outageReportCsv",
            "One CSV row per message received in the window (`swgw report --format csv`), as a download",
            {
                "description": "message_id, sender, message_type, destination, status, received_at, delivered_at, "
                "attempts; a header row first.",
                "content": {"text/csv": {"schema": {"type": "string"}}},
                "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
            },
        ),
        "/admin/oldest-ages": {
            "get": {
                "summary": "Each destination's oldest undelivered message age (this replica's, seconds)",
                "operationId": "oldestAges",
                "tags": ["console", "destinations"],
                "responses": {
                    "200": json_response(
                        "The ages; null where this replica has seen none.",
                        obj(
                            ["destinations"],
                            {
                                "destinations": {
                                    "type": "array",
                                    "items": obj(
                                        ["id", "oldest_age_s"],
                                        {"id": {"type": "string"}, "oldest_age_s": {"type": ["number", "null"]}},
                                    ),
                                }
                            },
                        ),
                    ),
                    **problems(401, 403),
                },
            }
        },
    }
