"""`swgw serve`: the gateway as a process, or a group of processes sharing one port.

`--workers N` forks N-1 intake-only processes that share the partner port (SO_REUSEPORT);
only the first runs delivery and the admin listener. The processes live and die as one
group: a worker whose parent is gone stops, and a parent whose worker died stops too, so
the service manager restarts the whole gateway rather than leaving part of its capacity.
On SIGTERM/SIGINT the server stops accepting, gives in-flight requests `request_timeout_s`,
then the cleanup contexts stop delivery (bounded) and close the broker connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.intake import tls
from gateway.runtime.app import ADMIN_APP, Role, create_app
from gateway.settings.model import Settings


def use_uvloop() -> None:
    """uvloop when installed: its C transports and loop cost ~10% less CPU per message (bench/)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _exit_with(pid: int) -> Callable[[object], AsyncIterator[None]]:
    """Cleanup context: SIGTERM this process as soon as `pid` has exited (or, pid 0, our parent changed).

    Workers of `serve --workers N` live and die as one group: a worker whose parent is gone
    stops, and a parent whose worker died stops too, so the supervisor restarts the whole
    gateway rather than leaving it with part of its capacity.
    """
    parent = os.getppid()

    def gone() -> bool:
        if pid == 0:
            return os.getppid() != parent
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        return done != 0

    async def watch() -> None:
        while not gone():  # noqa: ASYNC110 - a process exit has no event to await here
            await asyncio.sleep(1.0)
        logging.getLogger("swgw.serve").error(
            "%s exited; stopping this process too", "a worker" if pid else "the parent", extra={"event": "worker_exit"}
        )
        os.kill(os.getpid(), signal.SIGTERM)

    async def ctx(_: object) -> AsyncIterator[None]:
        task = asyncio.create_task(watch())
        yield
        task.cancel()

    return ctx


def serve(settings: Settings, *, role: Role = "all", workers: int = 1) -> int:
    """Run the gateway until SIGTERM/SIGINT; returns the exit status (2: bad --workers use)."""
    use_uvloop()
    # --workers N: N processes share the port (SO_REUSEPORT), each with its own broker
    # connection and publish channel. Only this (first) process runs delivery and the admin
    # listener; the others are ingress-only. Each serves its own /metrics on the partner port.
    children: list[int] = []
    if workers > 1 and (role == "delivery" or settings.admin.port is None):
        print(
            "serve --workers > 1 needs --role all or ingress, and [admin] port set so admin requests "
            "reach the process that runs delivery",
            file=sys.stderr,
        )
        return 2
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:  # a worker: intake only, no admin listener, stops when the parent goes
            role, children = "ingress", [0]
            break
        children.append(pid)
    app = create_app(settings, role=role)
    for pid in children:
        app.cleanup_ctx.append(_exit_with(pid))
    if children == [0]:
        app.pop(ADMIN_APP, None)
    ssl_context = tls.server_context(settings.server, config_file=str(settings.path))
    if ADMIN_APP in app:  # admin API on its own address, started and stopped with the main app
        admin_app = app[ADMIN_APP]

        async def admin_listener(_: web.Application) -> AsyncIterator[None]:
            runner = web.AppRunner(admin_app, access_log=None)
            await runner.setup()
            host = settings.admin.host or settings.server.host
            await web.TCPSite(runner, host, settings.admin.port, ssl_context=ssl_context).start()
            yield
            await runner.cleanup()

        app.cleanup_ctx.append(admin_listener)
    # SIGTERM/SIGINT: stop accepting, give in-flight requests request_timeout_s, then the
    # cleanup contexts stop delivery (bounded) and close the broker connection.
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.server.request_timeout_s,
        ssl_context=ssl_context,  # None: plain HTTP
        reuse_port=workers > 1 or None,
    )
    return 0
