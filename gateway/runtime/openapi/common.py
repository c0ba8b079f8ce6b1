"""What both API descriptions share: problem+json, security schemes, small builders.

Every error answer of the gateway is RFC 9457 `application/problem+json`, built in one place
(gateway/observability/problems.py): `type` (`urn:swgw:problem:<reason>`, or `about:blank`
for the framework's own 404/405/413), `title`, `status`, `detail`; the gateway's own errors
add `reason`, `instance` and, for documents or queries, `errors[]`; a 500 adds `incident`.
"""

from __future__ import annotations

from typing import Any

PROBLEM = "application/problem+json"
JSON = "application/json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details (gateway/observability/problems.py).",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:swgw:problem:schema_invalid", "about:blank"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "reason": {
            "type": "string",
            "description": "A short stable token (also the last segment of `type`): what to do depends on it.",
        },
        "instance": {"type": "string", "description": "The request path."},
        "incident": {"type": "string", "description": "500 only: the id of the log line with the cause."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["line", "column", "path", "reason"],
                "properties": {
                    "line": {"type": ["integer", "null"]},
                    "column": {"type": ["integer", "null"]},
                    "path": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}

RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}

ERRORS = {
    "400": "Bad request: malformed XML or envelope, or a bad query parameter or JSON body (named in `errors`).",
    "401": "No or unknown credentials (bearer token and/or client certificate).",
    "403": "Authenticated but not allowed (sender, message type, receiver, signature; admin: no admin token set).",
    "404": "Not found (see `reason`).",
    "405": "Method not allowed on this path.",
    "408": "The body was not received in time.",
    "409": "Conflict (see `reason`).",
    "413": "The body is larger than the gateway accepts.",
    "415": "Unsupported Content-Type.",
    "422": "The document is not valid for its schema or rules, or cannot be routed (`errors` lists why); "
    "admin: a bad parked or replay filter (`bad_filter`).",
    "429": "Over the partner's rate; Retry-After says when to come back.",
    "503": "Temporarily unable (broker, journal, duplicate store, overload); Retry-After says when to come back.",
}


def problem_responses() -> dict[str, Any]:
    """The reusable problem responses, `#/components/responses/Problem<status>`."""
    out: dict[str, Any] = {}
    for status, text in ERRORS.items():
        response: dict[str, Any] = {
            "description": text,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in ("429", "503"):
            response["headers"] = {"Retry-After": RETRY_AFTER}
        out[f"Problem{status}"] = response
    return out


def problems(*statuses: int) -> dict[str, Any]:
    """Responses naming the reusable problems for `statuses`: the complete list of refusals an operation gives.

    There is no `default`: a status not listed is a break of the contract (the live schemathesis run
    fails on it), and a 500, whose body is a problem naming an incident id, is never expected.
    """
    return {str(s): {"$ref": f"#/components/responses/Problem{s}"} for s in statuses}


def json_response(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def obj(required: list[str], properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A JSON object schema (further members allowed: answers may grow)."""
    return {"type": "object", "required": required, "properties": properties, **extra}


NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}
TIMESTAMP: dict[str, Any] = {"type": "string", "description": "ISO-8601 date-time (UTC)."}

PARTNER_SECURITY_SCHEMES: dict[str, Any] = {
    "partnerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "A partner's token (its sha256 is in `[[partners]] token_sha256`).",
    },
    "partnerCertificate": {
        "type": "mutualTLS",
        "description": "A client certificate on the TLS listener (`[server.tls]`), mapped to a partner by its "
        'subject or fingerprint; with `auth = "both"` a token is required as well.',
    },
}
ADMIN_SECURITY_SCHEMES: dict[str, Any] = {
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token (sha256 in `[admin] token_sha256` or $SWGW_ADMIN_TOKEN_SHA256). "
        "Partner tokens never satisfy it; with no admin token configured every admin route answers 403.",
    }
}
PARTNER_SECURITY: list[dict[str, list[str]]] = [{"partnerToken": []}, {"partnerCertificate": []}]
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]

OPENAPI_OPERATION: dict[str, Any] = {
    "summary": "This API description (OpenAPI 3.1)",
    "operationId": "openapi",
    "tags": ["meta"],
    "security": [],
    "responses": {"200": json_response("The OpenAPI document you are reading.", {"type": "object"})},
}
METRICS_OPERATION: dict[str, Any] = {
    "summary": "Prometheus metrics (text exposition format)",
    "tags": ["meta"],
    "security": [],
    "responses": {
        "200": {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
    },
}


def document(
    title: str,
    description: str,
    paths: dict[str, Any],
    schemas: dict[str, Any],
    schemes: dict[str, Any],
    security: list[dict[str, list[str]]],
    version: str,
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "security": security,
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA, **schemas},
            "responses": problem_responses(),
            "securitySchemes": schemes,
        },
    }
