"""OpenAPI 3.1 descriptions of what each listener serves, at `GET /openapi.json` on that listener.

    partner port, `[admin] port` set      the partner API (partner.py) + health, metrics
    admin listener (`[admin] port`)       the admin API (admin.py) + metrics
    one port for both (no `[admin] port`) one document with both: the partner API and the
                                          admin API, each operation with its own security
                                          scheme (partner token / mTLS, or the admin token)

A document describes exactly the routes its listener has: a `--role delivery` replica
serves no partner API, so its document has none (`document(partner=False, ...)`). HEAD,
which aiohttp answers beside every GET, is implied and not listed. tests/unit/test_openapi.py
checks the documents are valid OpenAPI 3.1 and match the routes create_app registers;
tests/integration/test_openapi_live.py runs schemathesis against a live gateway.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from aiohttp import web

from gateway.runtime.openapi import admin, common, partner

PATH = "/openapi.json"


def _version() -> str:
    try:
        return metadata.version("swgw")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "0.0.0"


def document(*, partner_api: bool, admin_api: bool, health: bool) -> dict[str, Any]:
    """The description of one listener: the partner API (and health) and/or the admin API, always metrics."""
    paths: dict[str, Any] = {PATH: {"get": dict(common.OPENAPI_OPERATION)}}
    schemas: dict[str, Any] = {}
    schemes: dict[str, Any] = {}
    if partner_api or health:
        everything = partner.paths()
        keep = [
            p for p in everything if (partner_api and p.startswith("/v1/")) or (health and p in ("/healthz", "/readyz"))
        ]
        paths.update({p: everything[p] for p in keep})
        schemas.update(partner.SCHEMAS)
    if partner_api:
        schemes.update(common.PARTNER_SECURITY_SCHEMES)
    if admin_api:
        paths.update(admin.paths())
        schemas.update(admin.SCHEMAS)
        schemes.update(common.ADMIN_SECURITY_SCHEMES)
    paths["/metrics"] = {"get": {**common.METRICS_OPERATION, "operationId": "metrics"}}
    if partner_api and admin_api:  # one port for both: each operation names its own credentials
        for p, item in paths.items():
            for op in item.values():
                op.setdefault("security", common.ADMIN_SECURITY if p.startswith("/admin/") else common.PARTNER_SECURITY)
        security: list[dict[str, list[str]]] = []
    else:
        security = common.PARTNER_SECURITY if partner_api else (common.ADMIN_SECURITY if admin_api else [])
    which = " and ".join(n for n, on in (("partner", partner_api), ("admin", admin_api)) if on) or "operations"
    return common.document(
        title=f"swgw {which} API",
        description="The single-window message gateway: safe XML ingest, confirmed queueing, outage-proof "
        "delivery. Errors are RFC 9457 application/problem+json; `reason` says what happened.",
        paths=paths,
        schemas=schemas,
        schemes=schemes,
        security=security,
        version=_version(),
    )


def view(doc: dict[str, Any]) -> web.RouteDef:
    """The `GET /openapi.json` route serving `doc` (serialised once)."""
    body = json.dumps(doc, ensure_ascii=False, indent=1)

    async def openapi_json(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "max-age=300"})

    return web.get(PATH, openapi_json)
