"""The API descriptions are valid OpenAPI 3.1 and say exactly what each listener serves.

Walks `router.routes()` of the apps create_app builds (partner port, admin listener, one
port for both, each role) and compares them with the document served at /openapi.json on
that same app: every registered route is described and every described route exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.runtime.app import ADMIN_APP, create_app
from gateway.runtime.openapi import PATH, document
from gateway.runtime.openapi.partner import example_envelope
from tests.helpers import TOKEN, config_doc, sha, write_settings

METHODS = {"get", "post", "put", "patch", "delete"}


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route; HEAD, which aiohttp adds beside each GET, is implied."""
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        out.add((route.method.lower(), route.resource.canonical))
    return out


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item if method in METHODS}


async def served(app: web.Application) -> dict[str, Any]:
    match = [r for r in app.router.routes() if r.method == "GET" and r.resource and r.resource.canonical == PATH]
    assert len(match) == 1, "every listener serves /openapi.json"
    response = await match[0].handler(make_mocked_request("GET", PATH, app=app))
    assert isinstance(response, web.Response)
    assert response.content_type == "application/json"
    assert isinstance(response.text, str)
    doc: dict[str, Any] = json.loads(response.text)
    return doc


def apps(tmp_path: Path, *, admin_port: int | None, role: str) -> list[web.Application]:
    partners = [{"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "rate_per_s": 100.0, "burst": 100}]
    doc = config_doc("openapi-test", partners=partners)
    if admin_port is not None:
        doc["admin"]["port"] = admin_port
    app = create_app(write_settings(tmp_path, doc), role=role)  # type: ignore[arg-type]
    return [app, app[ADMIN_APP]] if ADMIN_APP in app else [app]


@pytest.mark.parametrize("role", ["all", "ingress", "delivery"])
@pytest.mark.parametrize("admin_port", [None, 9791], ids=["shared-port", "admin-listener"])
async def test_every_route_is_described_and_every_described_route_exists(
    tmp_path: Path, role: str, admin_port: int | None
) -> None:
    for app in apps(tmp_path, admin_port=admin_port, role=role):
        doc = await served(app)
        routes, paths = registered(app), described(doc)
        assert routes - paths == set(), "registered but not described"
        assert paths - routes == set(), "described but not registered"
        schemathesis.openapi.from_dict(doc).validate()


async def test_the_shared_port_describes_both_apis_each_with_its_own_credentials(tmp_path: Path) -> None:
    (app,) = apps(tmp_path, admin_port=None, role="all")
    doc = await served(app)
    assert doc["security"] == []
    post = doc["paths"]["/v1/messages"]["post"]
    assert {next(iter(s)) for s in post["security"]} == {"partnerToken", "partnerCertificate"}
    assert doc["paths"]["/admin/destinations"]["get"]["security"] == [{"adminToken": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


async def test_the_admin_listener_describes_the_admin_api_only(tmp_path: Path) -> None:
    partner_app, admin_app = apps(tmp_path, admin_port=9791, role="all")
    partner_doc, admin_doc = await served(partner_app), await served(admin_app)
    assert not any(p.startswith("/admin/") for p in partner_doc["paths"])
    assert not any(p.startswith("/v1/") for p in admin_doc["paths"])
    assert admin_doc["security"] == [{"adminToken": []}]
    assert set(admin_doc["components"]["securitySchemes"]) == {"adminToken"}
    assert partner_doc["components"]["securitySchemes"]["partnerCertificate"]["type"] == "mutualTLS"


@pytest.mark.parametrize(("partner_api", "admin_api"), [(True, True), (True, False), (False, True), (False, False)])
def test_each_document_is_valid_openapi_3_1(partner_api: bool, admin_api: bool) -> None:
    doc = document(partner_api=partner_api, admin_api=admin_api, health=not admin_api or partner_api)
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()


def test_the_validator_rejects_a_broken_document() -> None:
    doc = document(partner_api=True, admin_api=False, health=True)
    doc["paths"]["/v1/messages"]["post"]["responses"]["202"] = {}  # a response needs a description
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(doc).validate()


def test_every_error_is_problem_json_and_the_receipt_is_described() -> None:
    doc = document(partner_api=True, admin_api=True, health=True)
    for status, response in doc["components"]["responses"].items():
        assert list(response["content"]) == ["application/problem+json"], status
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) or status == "default":
                    if path == "/readyz":  # not ready is the readiness JSON, not a problem
                        continue
                    assert "$ref" in response or "application/problem+json" in response["content"], (method, path)
    receipt = doc["components"]["schemas"]["Receipt"]
    assert set(receipt["required"]) == {"message_id", "status", "destination", "received_at"}
    assert receipt["properties"]["receipt"] == {"$ref": "#/components/schemas/ReceiptJws"}
    assert "Swgw-Receipt" in doc["paths"]["/v1/messages"]["post"]["responses"]["202"]["headers"]


def test_the_request_example_is_a_valid_envelope_from_the_package() -> None:
    doc = document(partner_api=True, admin_api=False, health=True)
    body = doc["paths"]["/v1/messages"]["post"]["requestBody"]["content"]["application/xml"]
    example = body["examples"]["cusdec"]["value"]
    assert example == example_envelope()
    assert "<MessageType>CUSDEC</MessageType>" in example
