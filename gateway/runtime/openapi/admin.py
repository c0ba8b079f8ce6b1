"""The admin API's paths and schemas (gateway/operations/admin.py says what each route does).

Every route needs the admin token (`adminToken`); an unknown destination id is a 404, a
bad journal query (`/admin/messages`) a 400 `bad_parameter` naming it, a bad parked or replay
filter a 422 `bad_filter`, a replay while another runs a 409 `replay_in_progress`.
"""

from __future__ import annotations

from typing import Any

from gateway.runtime.openapi import console
from gateway.runtime.openapi.common import (
    JSON,
    NULLABLE_INT,
    NULLABLE_STRING,
    TIMESTAMP,
    json_response,
    obj,
    problems,
)

STATUSES = ["received", "queued", "delivering", "delivered", "parked", "dead_lettered"]

PARKED = obj(
    ["message_id", "message_type", "sender", "reason", "status", "excerpt", "attempts", "parked_at"],
    {
        "message_id": {"type": "string"},
        "message_type": {"type": "string"},
        "sender": {"type": "string"},
        "reason": {"type": "string"},
        "status": NULLABLE_INT,
        "excerpt": {"type": "string"},
        "attempts": {"type": "integer"},
        "parked_at": {"type": "string"},
    },
)
RECORD_PROPERTIES: dict[str, Any] = {
    "sender": {"type": "string"},
    "message_id": {"type": "string"},
    "message_type": {"type": "string"},
    "receiver": {"type": "string"},
    "destination": {"type": "string"},
    "status": {"type": "string", "enum": STATUSES},
    "received_at": TIMESTAMP,
    "delivered_at": NULLABLE_STRING,
    "attempts": {"type": "integer"},
    "parked_reason": NULLABLE_STRING,
    "size": NULLABLE_INT,
    "sha256": NULLABLE_STRING,
    "updated_at": NULLABLE_STRING,
}
RECORD_REQUIRED = ["sender", "message_id", "message_type", "receiver", "destination", "status", "received_at"]

SCHEMAS: dict[str, Any] = {
    "DestinationState": obj(
        ["id", "state", "backlog", "parked"],
        {
            "id": {"type": "string"},
            "state": {"type": "string"},
            "consuming": {"type": "boolean"},
            "replica": {"type": "string", "description": "The replica answering ([broker] replica_id)."},
            "active": {
                "type": "boolean",
                "description": "This replica's consumer is the queue's single active one (it has been sent "
                "messages); false on a waiting replica, and on an idle queue until the first message.",
            },
            "active_since": NULLABLE_STRING,
            "consumer_tag": NULLABLE_STRING,
            "circuit": {"type": "string"},
            "paused": {"type": "boolean"},
            "backlog": NULLABLE_INT,
            "parked": NULLABLE_INT,
            "inflight": {"type": "integer"},
            "delivered_total": {"type": "integer"},
            "parked_total": {"type": "integer"},
            "last_delivery_at": NULLABLE_STRING,
            "circuit_changed_at": NULLABLE_STRING,
            "rate_limit_per_s": {"type": "number"},
            "concurrency_limit": {"type": "integer"},
        },
    ),
    "Parked": PARKED,
    "ReplayRequest": {
        "type": "object",
        "properties": {
            "since": {"type": "string", "description": "ISO-8601 date-time: parked since."},
            "until": {"type": "string"},
            "type": {"type": "string", "description": "Message type."},
            "from": {"type": "string", "description": "Sending partner."},
            "message_id": {"type": "string"},
            "limit": {"type": "integer", "minimum": 0},
            "rate": {"type": "number", "minimum": 0, "description": "Messages per second (0 or absent: unpaced)."},
            "dry_run": {"type": "boolean", "default": False},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        },
    },
    "ReplayReport": obj(
        [
            "id",
            "dry_run",
            "present",
            "scanned",
            "replayed",
            "skipped",
            "unread",
            "failed",
            "timed_out",
            "timeout_s",
            "messages",
        ],
        {
            "id": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "present": {"type": "integer"},
            "scanned": {"type": "integer"},
            "replayed": {"type": "integer"},
            "skipped": {"type": "integer"},
            "unread": {"type": "integer"},
            "failed": {"type": "integer"},
            "timed_out": {"type": "boolean"},
            "timeout_s": {"type": "number"},
            "messages": {"type": "array", "maxItems": 1000, "items": {"$ref": "#/components/schemas/Parked"}},
        },
    ),
    "MessageRecord": obj(RECORD_REQUIRED, RECORD_PROPERTIES),
    "MessageHistory": obj(
        [*RECORD_REQUIRED, "history"],
        {
            **RECORD_PROPERTIES,
            "history": {
                "type": "array",
                "items": obj(["at", "event"], {"at": {"type": "string"}, "event": {"type": "string"}}),
            },
        },
    ),
    "MessagePage": obj(
        ["messages", "next_cursor"],
        {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/MessageRecord"}},
            "next_cursor": NULLABLE_STRING,
        },
    ),
    **console.SCHEMAS,
}

DEST_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A destination id ([[destinations]] id).",
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _state_change(verb: str, text: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": text,
            "operationId": f"{verb}Destination",
            "tags": ["destinations"],
            "parameters": [DEST_ID],
            "responses": {
                "200": json_response(
                    "The destination's new state.",
                    obj(
                        ["id", "state"],
                        {
                            "id": {"type": "string"},
                            "state": {"type": "string"},
                            "scope": {
                                "type": "string",
                                "enum": ["all replicas", "this replica"],
                                "description": "All replicas when the journal's database holds the pause state "
                                "(every replica follows it within a second, and a restarted one comes up with it).",
                            },
                        },
                    ),
                ),
                **problems(401, 403, 404, 409, 503),
            },
        }
    }


def paths() -> dict[str, Any]:
    return {
        "/admin/destinations": {
            "get": {
                "summary": "Every destination: state, circuit, backlog, parked, last delivery",
                "operationId": "listDestinations",
                "tags": ["destinations"],
                "responses": {
                    "200": json_response(
                        "The destinations.",
                        obj(
                            ["destinations"],
                            {
                                "destinations": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/DestinationState"},
                                }
                            },
                        ),
                    ),
                    **problems(401, 403),
                },
            }
        },
        "/admin/destinations/{id}/pause": _state_change("pause", "Stop taking messages (in-flight ones finish)"),
        "/admin/destinations/{id}/resume": _state_change("resume", "Take messages again"),
        "/admin/destinations/{id}/parked": {
            "get": {
                "summary": "List parked messages (read without taking them)",
                "operationId": "listParked",
                "tags": ["parked"],
                "parameters": [
                    DEST_ID,
                    _query("limit", "At most this many (default 100).", {"type": "integer", "minimum": 0}),
                    _query("type", "Message type."),
                    _query("from", "Sending partner."),
                    _query("message_id", "One message."),
                    _query("since", "ISO-8601 date-time."),
                    _query("until", "ISO-8601 date-time."),
                ],
                "responses": {
                    "200": json_response(
                        "The parked messages.",
                        obj(
                            ["id", "parked"],
                            {
                                "id": {"type": "string"},
                                "parked": {"type": "array", "items": {"$ref": "#/components/schemas/Parked"}},
                            },
                        ),
                    ),
                    **problems(401, 403, 404, 422, 503),
                },
            }
        },
        "/admin/destinations/{id}/replay": {
            "post": {
                "summary": "Replay parked messages to the destination (dry_run: only say which)",
                "operationId": "replayParked",
                "tags": ["parked"],
                "parameters": [DEST_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        JSON: {
                            "schema": {"$ref": "#/components/schemas/ReplayRequest"},
                            "examples": {"dry": {"value": {"dry_run": True, "limit": 10}}},
                        }
                    },
                },
                "responses": {
                    "200": json_response("What the replay did.", {"$ref": "#/components/schemas/ReplayReport"}),
                    **problems(401, 403, 404, 409, 422, 503),
                },
            }
        },
        "/admin/messages": {
            "get": {
                "summary": "Search the journal: a page of records, newest first",
                "operationId": "searchMessages",
                "tags": ["messages"],
                "parameters": [
                    _query("status", "One status.", {"type": "string", "enum": STATUSES}),
                    _query("destination", "A destination id."),
                    _query("partner", "The sending partner."),
                    _query("type", "A message type."),
                    _query("since", "Received at or after (ISO-8601 with an offset)."),
                    _query("until", "Received before (ISO-8601 with an offset)."),
                    _query("cursor", "next_cursor of the previous page."),
                    _query("limit", "1..1000 (default 100).", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {
                    "200": json_response("A page.", {"$ref": "#/components/schemas/MessagePage"}),
                    **problems(400, 401, 403, 404, 503),
                },
            }
        },
        "/admin/messages/{sender}/{message_id}": {
            "get": {
                "summary": "One message's record and full history",
                "operationId": "messageHistory",
                "tags": ["messages"],
                "parameters": [
                    {"name": "sender", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json_response(
                        "The record and its history.", {"$ref": "#/components/schemas/MessageHistory"}
                    ),
                    **problems(401, 403, 404, 503),
                },
            }
        },
        **console.paths(),  # the ops console's pages and the routes it needed
    }
