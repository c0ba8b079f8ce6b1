"""A backend to break on purpose: drills, tests and the demo deliver to this.

Two listeners, because one of them must be able to disappear. The data port (`--port`)
is the fake backend: `POST /inbound` records each delivery by `X-Message-Id` and counts
duplicates; `GET /health` (or `GET /inbound`) says whether it is up. The control port
(`--control-port`) stays reachable in every mode: `GET /_sim/state`, `POST /_sim/mode`
(JSON such as `{"mode": "error", "status": 503, "retry_after": "30"}`), `GET /_sim/received`,
`GET /_sim/received/ids`, `GET /_sim/posts`, `POST /_sim/reset`.

Modes: `up`; `down` closes the listening socket and drops open connections, so clients get
a real "connection refused" until it reopens on the same port; `error` answers `status`
(default 503; /health says 503) with an optional `Retry-After` sent verbatim; `sick` is the
load balancer that lies: the health check (`GET /health`, `GET /inbound`) answers 200 while
every POST answers `status` (default 503, optional `Retry-After`); `slow` waits `delay_ms`
and still records a message whose client gave up, as a real backend would commit it (this
is how timeouts cause duplicates); `reject` answers 400 for `reject_types` and accepts the
rest; `flap` alternates up and down every `flap_s` seconds.

In every mode, the ids in `fail_ids` (X-Message-Id values) always fail with `fail_status`
(default 500): a poison message. 5xx makes the gateway retry it, 4xx makes it park it.

Counters drills read (reset by `reset()`): `health_hits` (every health GET that reached the
port, whatever it answered) and POSTs per message id, failed ones included (`posts_for(id)`,
`post_counts`); `GET /_sim/state` carries `health_hits` and `posts`, `GET /_sim/posts` the
count per id.

The command line (`swgw simulate`, `python -m gateway.tools.simulate`) is simulate.py; tests
use `Simulator` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections import Counter
from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway.observability.problems import problem_response
from gateway.timeutil import Sleep

log = logging.getLogger("gateway.tools.simulator")

_SETTLE_PASSES = 3
"""Event-loop passes for connections accepted before a stop to be made (each accept is a task)."""


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (SO_REUSEADDR: the port comes back after a down) that the server listens on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


MODES = ("up", "down", "error", "sick", "slow", "reject", "flap")


@dataclass(frozen=True)
class Mode:
    """What the backend does now. Each option only matters in its own mode."""

    name: str = "up"
    status: int = 503  # error, sick: the status answered (400-599, so 408/429 drills work too)
    retry_after: str | None = None  # error, sick: Retry-After value, verbatim (seconds, a date, or garbage)
    delay_ms: int = 0  # slow
    reject_types: frozenset[str] = frozenset()  # reject: answered 400
    flap_s: float = 5.0  # flap: seconds up, then as many down
    fail_ids: frozenset[str] = frozenset()  # every mode: these message ids always fail...
    fail_status: int = 500  # ...with this status (400-599)

    def __post_init__(self) -> None:
        # Checked here, not in the parsers, so the control API, the CLI and tests share it.
        def strings(value: object) -> bool:
            return isinstance(value, list | tuple | set | frozenset) and all(isinstance(t, str) for t in value)

        def status(value: object) -> bool:
            return type(value) is int and 400 <= value <= 599  # `type(x) is int` because True is an int too

        checks = (
            ("mode", self.name, self.name in MODES, f"one of {', '.join(MODES)}"),
            ("status", self.status, status(self.status), "an integer 400-599"),
            ("retry_after", self.retry_after, self.retry_after is None or isinstance(self.retry_after, str), "text"),
            ("delay_ms", self.delay_ms, type(self.delay_ms) is int and self.delay_ms >= 0, "an integer >= 0"),
            ("flap_s", self.flap_s, type(self.flap_s) in (int, float) and self.flap_s > 0, "a number > 0"),
            ("reject_types", self.reject_types, strings(self.reject_types), "a list of strings"),
            ("fail_ids", self.fail_ids, strings(self.fail_ids), "a list of strings"),
            ("fail_status", self.fail_status, status(self.fail_status), "an integer 400-599"),
        )
        for key, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{key}: {value!r} must be {expected}")
        object.__setattr__(self, "reject_types", frozenset(self.reject_types))
        object.__setattr__(self, "fail_ids", frozenset(self.fail_ids))

    @classmethod
    def from_json(cls, data: Any) -> Mode:
        """Build from a control-API body; errors name the offending key."""
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        options = [f.name for f in fields(cls) if f.name != "name"]
        for key in data:
            if key != "mode" and key not in options:
                raise ValueError(f"{key}: unknown option (expected mode, {', '.join(options)})")
        kw = {("name" if k == "mode" else k): v for k, v in data.items()}
        if type(kw.get("retry_after")) in (int, float):  # forgive {"retry_after": 30}
            kw["retry_after"] = str(kw["retry_after"])
        return cls(**kw)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "mode": d.pop("name"),
            **d,
            "reject_types": sorted(self.reject_types),
            "fail_ids": sorted(self.fail_ids),
        }


@dataclass(frozen=True)
class Arrival:
    """One accepted POST, as the backend saw it."""

    message_id: str
    message_type: str
    sender: str
    attempt: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Received:
    """Counts since start or the last reset. `conflicts`: duplicates whose body differed."""

    total: int
    unique: int
    duplicates: int
    conflicts: int
    rejected: int
    by_type: dict[str, int]  # unique ids per message type


class Simulator:
    """The simulated backend. `port=0` / `control_port=0` pick free ports (read `.port`).

    `sleep` paces `slow` delays and `flap` periods; tests inject a controllable one.
    `mode` is read-only: change it with `set_mode()`, which opens or closes the port.
    `health_hits` counts health GETs and `posts_for(id)` POSTs per message id (failed ones
    too), so drills can count probe intervals and delivery attempts.
    Use as `async with Simulator(...) as sim:` or call `start()` and `stop()`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        path: str = "/inbound",
        mode: Mode | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.host, self.path, self.port, self.control_port = host, path, port, control_port
        self.mode = mode or Mode()
        self._sleep = sleep
        self._arrived = asyncio.Condition()
        self._listen_lock = asyncio.Lock()
        self._flapper: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._site: web.SockSite | None = None
        self._listener: socket.socket | None = None
        self.reset()
        data = web.Application()
        data.router.add_post(path, self._inbound)
        data.router.add_get(path, self._health)
        data.router.add_get("/health", self._health)
        self._data = web.AppRunner(data, access_log=None, shutdown_timeout=1.0)
        control = web.Application()
        control.router.add_get("/_sim/state", self._get_state)
        control.router.add_post("/_sim/mode", self._post_mode)
        control.router.add_get("/_sim/received", self._get_received)
        control.router.add_get("/_sim/received/ids", self._get_ids)
        control.router.add_get("/_sim/posts", self._get_posts)
        control.router.add_post("/_sim/reset", self._post_reset)
        self._control = web.AppRunner(control, access_log=None)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    @property
    def listening(self) -> bool:
        return self._site is not None

    @property
    def received(self) -> Received:
        total, unique = len(self.deliveries), len(self._first)
        return Received(total, unique, total - unique, self._conflicts, self._rejected, dict(self._by_type))

    @property
    def ids(self) -> list[str]:
        """Unique message ids in first-seen order."""
        return list(self._first)

    def posts_for(self, message_id: str) -> int:
        """POSTs that arrived with this X-Message-Id, whatever they were answered."""
        return self._posts[message_id]

    @property
    def post_counts(self) -> dict[str, int]:
        """A copy of the POST count per message id (failed, rejected and slow ones included)."""
        return dict(self._posts)

    @property
    def posts(self) -> int:
        """Every POST that reached the data port, with or without a message id."""
        return self._posts_total

    def reset(self) -> None:
        """Forget everything received and zero the counters (the mode is kept)."""
        self.deliveries: list[Arrival] = []
        self._first: dict[str, str] = {}  # id -> sha256 of the first copy
        self._by_type: Counter[str] = Counter()
        self._conflicts = self._rejected = 0
        self._posts: Counter[str] = Counter()
        self._posts_total = 0
        self.health_hits = 0

    async def start(self) -> None:
        await self._control.setup()
        await web.TCPSite(self._control, self.host, self.control_port).start()
        self.control_port = self._control.addresses[0][1]
        await self._data.setup()
        # Always bind once, even when starting "down", so port=0 has a port to come back on.
        await self._set_listening(True)
        await self.set_mode(self.mode)

    async def stop(self) -> None:
        await self._stop_flapping()
        await self._set_listening(False)
        await self._data.cleanup()
        await self._control.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def set_mode(self, mode: Mode | str, **options: Any) -> Mode:
        """Switch mode, e.g. `await sim.set_mode("error", status=500, retry_after="5")`."""
        new = mode if isinstance(mode, Mode) else Mode(mode, **options)
        await self._stop_flapping()
        self.mode = new
        if new.name == "flap":
            self._flapper = asyncio.create_task(self._flap(new.flap_s))
        else:
            await self._set_listening(new.name != "down")
        log.info("simulator mode %s", new.as_dict())
        return new

    async def wait_for(self, count_unique: int, timeout_s: float) -> Received:
        """Wait until at least `count_unique` distinct ids arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self._first) >= count_unique)
        return self.received

    # --- data port ---------------------------------------------------------------------------

    async def _inbound(self, request: web.Request) -> web.Response:
        mode = self.mode
        body = await request.read()
        h = request.headers
        mid, mtype = h.get("X-Message-Id", ""), h.get("X-Message-Type", "")
        self._posts_total += 1
        if mid:  # counted on arrival: a POST that later fails or is cut off still was one
            self._posts[mid] += 1
        if failure := await self._misbehave(mode, post=True):
            return failure
        if not mid:
            self._rejected += 1
            return problem_response(400, "Missing message id", "the X-Message-Id header is required")
        if mid in mode.fail_ids:
            return problem_response(mode.fail_status, "Poison message", f"simulator always fails message {mid!r}")
        if mode.name == "reject" and mtype in mode.reject_types:
            self._rejected += 1
            return problem_response(400, "Rejected", f"simulator rejects message type {mtype!r}")
        digest = hashlib.sha256(body).hexdigest()
        d = Arrival(mid, mtype, h.get("X-Message-From", ""), h.get("X-Delivery-Attempt", ""), len(body), digest)
        self.deliveries.append(d)
        duplicate = mid in self._first
        if duplicate:
            self._conflicts += self._first[mid] != digest
        else:
            self._first[mid] = digest
            self._by_type[mtype] += 1
        async with self._arrived:
            self._arrived.notify_all()
        return web.json_response({"status": "accepted", "message_id": mid, "duplicate": duplicate})

    async def _health(self, request: web.Request) -> web.Response:
        self.health_hits += 1
        return await self._misbehave(self.mode, post=False) or web.json_response({"status": "up"})

    async def _misbehave(self, mode: Mode, *, post: bool) -> web.Response | None:
        """The slow delay, then the failure the mode answers (error: everything; sick: POSTs
        only, the health check lies); None: answer normally."""
        if mode.name == "slow":
            # Tracked so that going down can kill it, as a crashing process would.
            task = asyncio.current_task()
            assert task is not None
            self._inflight.add(task)
            try:
                await self._sleep(mode.delay_ms / 1000)
            finally:
                self._inflight.discard(task)
        if not (mode.name == "error" or (post and mode.name == "sick")):
            return None
        status = mode.status if post else 503
        headers = {"Retry-After": mode.retry_after} if mode.retry_after is not None else None
        return problem_response(
            status, "Simulated failure", f"simulator in {mode.name} mode ({status})", headers=headers
        )

    async def _set_listening(self, up: bool) -> None:
        async with self._listen_lock:
            if up and self._site is None:
                self._listener = _listening_socket(self.host, self.port)
                self._site = web.SockSite(self._data, self._listener)
                await self._site.start()
                self.port = self._data.addresses[0][1]
                log.info("simulator data port %d accepting connections", self.port)
            elif not up and self._site is not None:
                site, self._site = self._site, None
                # Stop accepting, then let the connections already accepted be made before the
                # server closes: asyncio (3.11) drops a connection accepted just before its
                # server closed without closing its socket (Server._attach asserts, silently),
                # a ResourceWarning later and, here, a connection left answering while "down".
                assert self._listener is not None
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
                for _ in range(_SETTLE_PASSES):
                    await asyncio.sleep(0)
                await site.stop()
                # Closing the listener alone would leave keep-alive connections answering.
                server = self._data.server
                for conn in server.connections if server else ():
                    conn.force_close()
                for task in list(self._inflight):
                    task.cancel()
                log.info("simulator data port %d refusing connections", self.port)

    async def _flap(self, period_s: float) -> None:
        while True:
            for up in (True, False):
                # Shielded: a mode change must not leave a half-opened listener behind.
                await asyncio.shield(self._set_listening(up))
                await self._sleep(period_s)

    async def _stop_flapping(self) -> None:
        if self._flapper is not None:
            self._flapper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flapper
            self._flapper = None

    # --- control port ------------------------------------------------------------------------

    async def _get_state(self, request: web.Request | None = None) -> web.Response:
        state = {
            "mode": self.mode.as_dict(),
            "listening": self.listening,
            "url": self.url,
            "port": self.port,
            "health_hits": self.health_hits,
            "posts": self.posts,
        }
        return web.json_response(state)

    async def _post_mode(self, request: web.Request) -> web.Response:
        try:
            mode = Mode.from_json(await request.json())
        except ValueError as exc:  # includes malformed JSON
            return web.json_response({"error": str(exc)}, status=400)
        await self.set_mode(mode)
        return await self._get_state()

    async def _get_received(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.received))

    async def _get_ids(self, request: web.Request) -> web.Response:
        return web.json_response({"ids": self.ids})

    async def _get_posts(self, request: web.Request) -> web.Response:
        """`{"total", "health_hits", "by_id"}`; with `?id=X` only `{"id", "posts"}` for that id."""
        if "id" in request.query:
            mid = request.query["id"]
            return web.json_response({"id": mid, "posts": self.posts_for(mid)})
        return web.json_response({"total": self.posts, "health_hits": self.health_hits, "by_id": self.post_counts})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(asdict(self.received))
