"""The one place exceptions become HTTP answers (RFC 9457 application/problem+json).

IngressError subclasses carry their status, reason and problems list; aiohttp's own
HTTP errors (404, 405, 413 from the framework) are rendered the same way; anything else is
a 500 whose body leaks nothing but a correlation id that is also in the log.
`problem_response` is the one builder of a problem+json answer; the simulator
(gateway/tools/simulator.py) answers its simulated failures with it too.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import IngressError

log = logging.getLogger("swgw.http")
PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if extra:
        body.update(extra)
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON, headers=headers
    )


def from_ingress_error(exc: IngressError, instance: str) -> web.Response:
    extra: dict[str, Any] = {"reason": exc.reason, "instance": instance}
    if exc.problems:
        extra["errors"] = [p.as_dict() for p in exc.problems]
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return problem_response(exc.status, exc.title, exc.detail, type_=exc.problem_type, extra=extra, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IngressError as exc:
        return from_ingress_error(exc, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return problem_response(exc.status, exc.reason, exc.text or exc.reason, headers=keep)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error, incident %s", incident, extra={"event": "internal_error", "incident": incident})
        return problem_response(
            500,
            "Internal error",
            f"The gateway failed to handle the request (incident {incident}). Nothing was queued; retry later.",
            extra={"incident": incident},
        )
