"""The partner API's paths and schemas: send a message, ask where it is, pull the inbox, get the receipt keys.

What each route answers is written beside its handler (gateway/intake/handler.py,
gateway/intake/status.py, gateway/inbox/api.py, gateway/runtime/app.py); this module says
the same as data. tests/unit/test_openapi.py keeps it and the routes in step.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from gateway.runtime.openapi.common import (
    JSON,
    METRICS_OPERATION,
    NULLABLE_STRING,
    TIMESTAMP,
    json_response,
    obj,
    problems,
)

EXAMPLE = ("examples", "CUSDEC", "valid", "export-b11-agricultural.xml")
"""A valid envelope shipped with the package (gateway/schemas/examples/), the description's request example."""


def example_envelope() -> str:
    return resources.files("gateway").joinpath("schemas/" + "/".join(EXAMPLE)).read_text(encoding="utf-8")


RECEIPT_JWS: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
    "description": "A signed receipt: a compact JWS (EdDSA or ES256, `typ` swgw-receipt+jws) whose payload is "
    "{body_sha256, message_id, message_type, receipt_version, received_at, receiver, sender}. Verify it with "
    "the keys of GET /v1/receipt-keys (`swgw verify-receipt`). Present only when the gateway has [receipts].",
}

ID = {"type": "string", "pattern": r"^[A-Za-z0-9._:\-]{1,64}$"}
ENVELOPE: dict[str, Any] = {
    "type": "object",
    "description": "The envelope (schemas/envelope/envelope-1.xsd, namespace urn:swgw:envelope:1): a Header, "
    "then a Body holding one payload element of the message type's schema (validated against it). "
    "Signed partners sign the payload with XML-DSig. No DOCTYPE or entities.",
    "xml": {"name": "Envelope", "namespace": "urn:swgw:envelope:1"},
    "required": ["Header", "Body"],
    "properties": {
        "Header": {
            "type": "object",
            "required": ["MessageId", "From", "To", "MessageType", "SentAt"],
            "properties": {
                "MessageId": {**ID, "description": "Unique per sender; a repeat with the same body is answered 200."},
                "CorrelationId": ID,
                "From": {**ID, "description": "The sending partner: must be the authenticated one."},
                "To": {**ID, "description": "The receiver; with MessageType it picks the route."},
                "MessageType": {**ID, "description": "A message type configured on the gateway, e.g. CUSDEC."},
                "SentAt": {"type": "string", "format": "date-time"},
                "TestIndicator": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "Body": {"type": "object", "description": "One payload element, in its own namespace."},
    },
    "additionalProperties": False,
}

SCHEMAS: dict[str, Any] = {
    "Envelope": ENVELOPE,
    "Receipt": obj(
        ["message_id", "status", "destination", "received_at"],
        {
            "message_id": {"type": "string"},
            "status": {"type": "string", "enum": ["queued"]},
            "destination": {"type": "string"},
            "received_at": TIMESTAMP,
            "receipt": {"$ref": "#/components/schemas/ReceiptJws"},
        },
        description="The broker confirmed the message: it will be delivered. For a repeat of an accepted "
        "message (same sender, MessageId and body) the same receipt again, with 200.",
    ),
    "ReceiptJws": RECEIPT_JWS,
    "MessageStatus": obj(
        ["message_id", "status", "message_type", "receiver", "destination", "received_at", "attempts"],
        {
            "message_id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["received", "queued", "delivering", "delivered", "parked", "dead_lettered"],
            },
            "message_type": {"type": "string"},
            "receiver": {"type": "string"},
            "destination": {"type": "string"},
            "received_at": TIMESTAMP,
            "delivered_at": NULLABLE_STRING,
            "attempts": {"type": "integer", "minimum": 0},
            "updated_at": NULLABLE_STRING,
            "receipt": {
                "oneOf": [{"$ref": "#/components/schemas/ReceiptJws"}, {"type": "null"}],
                "description": "With ?receipt=1: the 202's receipt signed again (null if none can be made).",
            },
        },
    ),
    "InboxMessage": obj(
        ["message_id", "message_type", "sender", "received_at", "body"],
        {
            "message_id": {"type": "string"},
            "message_type": {"type": "string"},
            "sender": {"type": "string"},
            "received_at": TIMESTAMP,
            "body": {"type": "string", "description": "The envelope's XML as the sender posted it."},
        },
    ),
    "InboxPage": obj(
        ["messages"], {"messages": {"type": "array", "items": {"$ref": "#/components/schemas/InboxMessage"}}}
    ),
    "InboxAck": obj(
        ["message_ids"],
        {"message_ids": {"type": "array", "maxItems": 1000, "items": {"type": "string", "minLength": 1}}},
    ),
    "InboxAckResult": obj(
        ["acknowledged", "unknown"],
        {
            "acknowledged": {"type": "array", "items": {"type": "string"}},
            "unknown": {"type": "array", "items": {"type": "string"}},
        },
    ),
    "Jwks": obj(["keys"], {"keys": {"type": "array", "items": {"type": "object"}}}),
    "Readiness": obj(
        ["ready", "broker", "schemas"],
        {
            "ready": {"type": "boolean"},
            "broker": obj(
                ["state"],
                {"state": {"type": "string", "enum": ["connected", "blocked", "down"]}, "error": {"type": "string"}},
            ),
            "schemas": {"type": "object"},
            "destinations": {"type": "object", "description": "Each destination's state, when delivery runs here."},
        },
    ),
}


def _send() -> dict[str, Any]:
    xml_body = {
        "schema": {"$ref": "#/components/schemas/Envelope"},
        "examples": {"cusdec": {"summary": "A valid customs declaration", "value": example_envelope()}},
    }
    return {
        "summary": "Send a message (an XML envelope)",
        "operationId": "sendMessage",
        "tags": ["messages"],
        "description": "Checks, cheapest first: concurrency (503), Content-Type (415), credentials (401), rate "
        "(429), size (413), body deadline (408), XML and envelope (400), sender and authorisation (403), "
        "signature (403), payload schema and rules (422), route (422); then a confirmed publish. A 202 is "
        "written only after the broker's confirm; any publish failure is a 503 with Retry-After.",
        "requestBody": {"required": True, "content": {"application/xml": xml_body, "text/xml": xml_body}},
        "responses": {
            "202": json_response(
                "Queued: the broker confirmed the message.",
                {"$ref": "#/components/schemas/Receipt"},
                headers={"Swgw-Receipt": {"description": "The signed receipt (as `receipt`).", "schema": RECEIPT_JWS}},
            ),
            "200": json_response(
                "A repeat of an accepted message (same sender, MessageId and body): nothing queued again.",
                {"$ref": "#/components/schemas/Receipt"},
            ),
            **problems(400, 401, 403, 408, 409, 413, 415, 422, 429, 503),
        },
    }


def paths() -> dict[str, Any]:
    message_id = {"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/messages": {"post": _send()},
        "/v1/messages/{message_id}": {
            "get": {
                "summary": "Where is my message? (your own messages only)",
                "operationId": "messageStatus",
                "tags": ["messages"],
                "parameters": [
                    message_id,
                    {
                        "name": "receipt",
                        "in": "query",
                        "required": False,
                        "description": "1 or true: include the signed receipt.",
                        "schema": {"type": "string", "enum": ["1", "true", "0", "false"]},
                    },
                ],
                "responses": {
                    "200": json_response("The message's record.", {"$ref": "#/components/schemas/MessageStatus"}),
                    **problems(401, 404, 429, 503),
                },
            }
        },
        "/v1/inbox": {
            "get": {
                "summary": "Pull messages from your inbox (leased until acknowledged)",
                "operationId": "pullInbox",
                "tags": ["inbox"],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    },
                    {
                        "name": "wait_s",
                        "in": "query",
                        "required": False,
                        "description": "Long poll: wait up to this many seconds for the first arrival.",
                        "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
                    },
                ],
                "responses": {
                    "200": json_response(
                        "Up to `limit` leased messages.",
                        {"$ref": "#/components/schemas/InboxPage"},
                        headers={"Cache-Control": {"schema": {"type": "string"}}},
                    ),
                    **problems(400, 401, 404, 429, 503),
                },
            }
        },
        "/v1/inbox/ack": {
            "post": {
                "summary": "Acknowledge pulled messages (idempotent)",
                "operationId": "ackInbox",
                "tags": ["inbox"],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/InboxAck"}}},
                },
                "responses": {
                    "200": json_response(
                        "What was acknowledged, and ids no leased message has.",
                        {"$ref": "#/components/schemas/InboxAckResult"},
                    ),
                    **problems(400, 401, 404, 413, 429, 503),
                },
            }
        },
        "/v1/receipt-keys": {
            "get": {
                "summary": "The public keys that verify receipts (JWKS)",
                "operationId": "receiptKeys",
                "tags": ["receipts"],
                "security": [],
                "responses": {"200": json_response("A JWKS (RFC 7517).", {"$ref": "#/components/schemas/Jwks"})},
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process answers",
                "operationId": "healthz",
                "tags": ["meta"],
                "security": [],
                "responses": {"200": json_response("Alive.", obj(["status"], {"status": {"const": "ok"}}))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Ready to take messages (broker connected, schemas compiled)",
                "operationId": "readyz",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": json_response("Ready.", {"$ref": "#/components/schemas/Readiness"}),
                    "503": json_response(
                        "Not ready (same body, `ready` false).", {"$ref": "#/components/schemas/Readiness"}
                    ),
                },
            }
        },
        "/metrics": {"get": {**METRICS_OPERATION, "operationId": "metrics"}},
    }
