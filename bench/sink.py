"""A fast backend for drains: answers 200 to every POST and counts; nothing else.

The simulator records every delivery (id, digest) for drills; a drain benchmark needs a
backend that costs as little CPU as possible, so this one only counts.

    python -m bench.sink --port 9001        GET /health, POST /inbound, GET /count
"""

from __future__ import annotations

import argparse

from aiohttp import web


def make_app() -> web.Application:
    count = [0]

    async def inbound(request: web.Request) -> web.Response:
        await request.read()
        count[0] += 1
        return web.Response(status=200, text="ok")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="up")

    async def counted(_: web.Request) -> web.Response:
        return web.json_response({"count": count[0]})

    app = web.Application()
    app.router.add_post("/inbound", inbound)
    app.router.add_get("/health", health)
    app.router.add_get("/inbound", health)
    app.router.add_get("/count", counted)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="fast counting sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
