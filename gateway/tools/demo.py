"""`swgw demo`: the whole flow in one command, against the local RabbitMQ.

It starts one backend simulator per destination of the example config (ops/gateway.toml)
and the gateway itself, then narrates: a realistic mix of every message type accepted
and delivered; bad input refused with precise errors; a backend outage absorbed (circuit
open, backlog held in RabbitMQ) and drained after recovery with nothing lost; a rejected
message parked and replayed; a re-sent message answered as a duplicate, with the same signed
receipt (signed with a key made for the run, unless the config names one). `--keep-running`
leaves everything up afterwards for curl and `swgw status`.

The narration is a few lines per step on stdout. The gateway's and simulators' logs go to
a file whose path is printed first (they used to interleave hundreds of lines with the
story). Every wait says what it waits for and is bounded: a wait that runs out stops the
demo with the log's path instead of sitting silent (step 4 once waited 30 s for a parking
that could not happen: one of its two ECOO messages is routed to a backend that accepts
it). The drain and the replay show count, rate and time left on a terminal
(gateway/progress.py; nothing in a pipe).

Everything it needs ships in the package: the example messages (gateway/schemas, a link to
schemas/ in a checkout) and its config (gateway/tools/demo.toml, a link to ops/gateway.toml),
the default of `swgw demo --config`. Its SQLite dedup store lives in a temporary folder for the
run, never next to the config (inside an installed package, or a read-only /app/ops).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.credentials import token_hash
from gateway.intake.validation import MESSAGE_SET, packaged
from gateway.observability import logs
from gateway.progress import Progress
from gateway.receipts import KeyRing, verify
from gateway.runtime.app import BROKER, DELIVERY, create_app
from gateway.settings.model import ReceiptSettings, Settings
from gateway.tools.simulator import Simulator

EXAMPLES = MESSAGE_SET / "examples"
DEMO_CONFIG = packaged("tools/demo.toml")  # ops/gateway.toml in a checkout
ATTACK = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
    b'<Envelope xmlns="urn:swgw:envelope:1">&lol2;</Envelope>'
)
DEMO_TOKENS = {
    "VN-NSW": "demo-vn-nsw-token",
    "VN-VNACCS": "demo-vnaccs-token",
    "TH-NSW": "demo-th-nsw-token",
    "SG-NSW": "demo-sg-nsw-token",
    "VN-PORT-CATLAI": "demo-port-catlai-token",
    "VN-WH-01": "demo-wh01-token",
}
ADMIN_TOKEN = "demo-admin-token"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n=== {title} " + "=" * max(3, 76 - len(title)))


class DemoStuck(SystemExit):
    """A bounded wait ran out: the demo stops and says where the logs are."""


async def _until(predicate: Callable[[], bool], what: str, log: Path | None = None, timeout_s: float = 30) -> None:
    """Wait for in-process state the demo narrates (cheap to check); stop the demo if it never comes."""
    for _ in range(int(timeout_s * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise DemoStuck(f"demo: {what} did not happen within {timeout_s:g}s; the logs say why: {log}")


async def _delivered(sim: Simulator, target: int, label: str, *, timeout_s: float) -> None:
    """Wait until `sim` has `target` unique messages, drawing progress on a terminal."""
    start = sim.received.unique
    with Progress(label, target - start, stream=sys.stderr) as progress:
        deadline = time.monotonic() + timeout_s
        while sim.received.unique < target and time.monotonic() < deadline:
            progress.update(sim.received.unique - start)
            await asyncio.sleep(0.1)
        progress.update(sim.received.unique - start)
    await sim.wait_for(target, timeout_s=1)  # raises with the simulator's counts if short


def _relabel(body: bytes, run: str, n: int) -> tuple[bytes, str, str]:
    start = body.index(b"<MessageId>") + len(b"<MessageId>")
    end = body.index(b"</MessageId>")
    new_id = f"{body[start:end].decode()[:40]}-{run}-{n}"
    sender = body[body.index(b"<From>") + 6 : body.index(b"</From>")].decode()
    return body[:start] + new_id.encode() + body[end:], new_id, sender


class Demo:
    def __init__(self, settings: Settings, keep_running: bool, log: Path | None = None) -> None:
        self.settings = settings
        self.keep_running = keep_running
        self.log = log
        self.run = uuid.uuid4().hex[:6]
        self.n = 0
        self.base = f"http://{settings.server.host}:{settings.server.port}"
        self.sims: dict[str, Simulator] = {}

    def check_tokens(self) -> None:
        for p in self.settings.partners:
            token = DEMO_TOKENS.get(p.id)
            if token is None or token_hash(token) not in p.token_sha256:
                raise SystemExit(
                    f"demo: partner {p.id} in {self.settings.path} has no demo token; "
                    "run the demo with its own config (the default; ops/gateway.toml in a checkout)"
                )

    async def post(self, session: aiohttp.ClientSession, body: bytes, sender: str) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/xml", "Authorization": f"Bearer {DEMO_TOKENS[sender]}"}
        async with session.post(f"{self.base}/v1/messages", data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def admin(self, session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
        async with session.request(
            method, f"{self.base}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw
        ) as resp:
            return await resp.json(content_type=None)

    def fresh(self, path: Path) -> tuple[bytes, str, str]:
        self.n += 1
        return _relabel(path.read_bytes(), self.run, self.n)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[web.Application]:
        for dest in self.settings.destinations:
            url = urlsplit(dest.url)
            sim = Simulator(port=url.port or 80, control_port=(url.port or 80) + 100, path=url.path or "/")
            await sim.start()
            self.sims[dest.id] = sim
        app = create_app(self.settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.server.host, self.settings.server.port).start()
        try:
            try:
                await asyncio.wait_for(app[BROKER].connected.wait(), timeout=20)
            except TimeoutError:
                raise SystemExit(
                    "demo: RabbitMQ is not reachable on the configured URL; start it with "
                    "'rabbitmq-server -detached' (ops/setup-env.sh does this)"
                ) from None
            yield app
        finally:
            await runner.cleanup()
            for sim in self.sims.values():
                await sim.stop()

    async def main(self) -> int:
        self.check_tokens()
        async with self.running() as app, aiohttp.ClientSession() as s:
            say(f"gateway on {self.base} (admin token: {ADMIN_TOKEN}); a simulated backend per destination:")
            say("  " + ", ".join(f"{d} -> {sim.url}" for d, sim in self.sims.items()))
            await self.normal_flow(s)
            await self.bad_input(s)
            await self.outage(s, app)
            await self.park_and_replay(s, app)
            await self.duplicate(s)
            step("what ops sees: GET /admin/destinations")
            for row in (await self.admin(s, "GET", "/admin/destinations"))["destinations"]:
                say(
                    f"  {row['id']:<8} state={row['state']:<7} backlog={row['backlog']} parked={row['parked']} "
                    f"delivered={row['delivered_total']}"
                )
            if self.keep_running:
                say(
                    "\nStill running (Ctrl-C to stop). Try: curl -s "
                    f"{self.base}/readyz | python3 -m json.tool ; curl -s {self.base}/metrics | grep swgw_"
                )
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
        say("\ndemo finished: every accepted message reached its backend.")
        if self.log is not None:
            say(f"the gateway's logs of this run: {self.log}")
        return 0

    async def normal_flow(self, s: aiohttp.ClientSession) -> None:
        step("1. partners send a realistic mix of every message type")
        files = sorted(EXAMPLES.glob("*/valid/*.xml"))
        expected: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        senders = set()
        for path in files:
            body, mid, sender = self.fresh(path)
            status, answer = await self.post(s, body, sender)
            if status == 202:
                expected[answer["destination"]] += 1
                accepted[path.parent.parent.name] += 1
                senders.add(sender)
            else:
                say(f"  {status} {mid} from {sender}: {answer.get('detail')}")
        say(f"  202 from {len(senders)} partners: " + ", ".join(f"{t} x{n}" for t, n in sorted(accepted.items())))
        say("  routed: " + ", ".join(f"{d}={n}" for d, n in sorted(expected.items())))
        for dest, count in expected.items():
            await self.sims[dest].wait_for(count, timeout_s=30)
        say("  delivered: " + ", ".join(f"{d}={self.sims[d].received.unique}" for d in sorted(expected)))

    async def bad_input(self, s: aiohttp.ClientSession) -> None:
        step("2. bad input gets a precise error, and is never queued")
        for path in sorted(EXAMPLES.glob("CUSDEC/invalid/*.xml"))[:2]:
            body, _, sender = self.fresh(path)
            status, problem = await self.post(s, body, sender)
            first = (problem.get("errors") or [{}])[0]
            say(f"  {status} {path.name}: {problem.get('detail')}")
            if first:
                say(f"      line {first.get('line')}, column {first.get('column')}, {first.get('path')}")
        status, problem = await self.post(s, ATTACK, "VN-NSW")
        say(f"  {status} billion-laughs document: {problem.get('detail')}")

    async def outage(self, s: aiohttp.ClientSession, app: web.Application) -> None:
        step("3. the clearance backend goes down; 200 declarations keep coming")
        sim = self.sims["vnaccs"]
        before = sim.received.unique
        await sim.set_mode("down")
        declaration = sorted(EXAMPLES.glob("CUSDEC/valid/*.xml"))[0]
        results = await asyncio.gather(*(self.post(s, *self.fresh(declaration)[::2]) for _ in range(200)))
        say(f"  answers: {sum(1 for st, _ in results if st == 202)} x 202 (each confirmed by RabbitMQ)")
        worker = app[DELIVERY].workers["vnaccs"]
        await _until(
            lambda: worker.state == "open" and app[BROKER].depths.get("vnaccs", (0, 0))[0] >= 200,
            "the circuit opening with 200 held",
            self.log,
        )
        row = next(
            r for r in (await self.admin(s, "GET", "/admin/destinations"))["destinations"] if r["id"] == "vnaccs"
        )
        say(f"  gateway reports: vnaccs circuit={row['state']}, backlog={row['backlog']} held in RabbitMQ")
        say("  backend recovers; draining (slow start: the rate ramps up from 10%) ...")
        started = time.monotonic()
        await sim.set_mode("up")
        await _delivered(sim, before + 200, "  draining vnaccs", timeout_s=120)
        got = sim.received
        say(
            f"  drained {got.unique - before} messages in {time.monotonic() - started:.1f}s (slow start included); "
            f"duplicates delivered: {got.duplicates} (the backend dedups by X-Message-Id)"
        )

    async def park_and_replay(self, s: aiohttp.ClientSession, app: web.Application) -> None:
        step("4. a backend rejects a message type: parked, fixed, replayed")
        sim = self.sims["asw"]
        before = sim.received.unique
        await sim.set_mode("reject", reject_types=["ECOO"])
        to_asw = 0
        for path in sorted(EXAMPLES.glob("ECOO/valid/*.xml")):
            body, mid, sender = self.fresh(path)
            status, answer = await self.post(s, body, sender)
            dest = answer.get("destination")
            say(f"  {status} {mid} -> {dest}" + (" (rejects ECOO now)" if dest == "asw" else " (accepts it)"))
            to_asw += dest == "asw"
        worker = app[DELIVERY].workers["asw"]
        parked_before = worker.parked_total
        # Only the ones routed to asw can be parked: waiting for every ECOO sat out the 30 s bound.
        await _until(lambda: worker.parked_total >= parked_before + to_asw, f"{to_asw} parked on asw", self.log)
        parked = await self.admin(s, "GET", "/admin/destinations/asw/parked")
        for row in parked["parked"]:
            say(
                f"  parked: {row['message_id']} reason={row['reason']} status={row['status']} "
                f"answer={row['excerpt'][:60]!r}"
            )
        dry = await self.admin(s, "POST", "/admin/destinations/asw/replay", json={"dry_run": True, "type": "ECOO"})
        say(f"  dry run would replay {len(dry['messages'])}; backend fixed; replaying at 10/s ...")
        await sim.set_mode("up")
        report = await self.admin(s, "POST", "/admin/destinations/asw/replay", json={"type": "ECOO", "rate": 10})
        await _delivered(sim, before + report["replayed"], "  replaying asw", timeout_s=30)
        say(f"  replayed {report['replayed']}, all delivered (same message ids as the originals)")

    async def duplicate(self, s: aiohttp.ClientSession) -> None:
        step("5. a partner re-sends a message it was unsure about")
        body, _, sender = self.fresh(sorted(EXAMPLES.glob("CUSDEC/valid/*.xml"))[1])
        first = await self.post(s, body, sender)
        again = await self.post(s, body, sender)
        say(f"  first: {first[0]} received_at={first[1].get('received_at')}")
        say(f"  again: {again[0]} received_at={again[1].get('received_at')} duplicate={again[1].get('duplicate')}")
        if self.settings.receipts is not None and "receipt" in again[1]:
            jwks = KeyRing.load(self.settings.receipts.signing_keys).jwks()  # what GET /v1/receipt-keys publishes
            claims = verify(again[1]["receipt"], jwks, body=body)
            same = again[1]["receipt"] == first[1].get("receipt")
            digest = claims["body_sha256"][:16]
            say(f"  signed receipt verifies for these bytes: body_sha256={digest}..., same as the first's: {same}")


def run(settings: Settings, *, keep_running: bool = False) -> int:
    """Run the demo; its logs go to a file in the temporary folder that outlives the run."""
    fd, name = tempfile.mkstemp(prefix="swgw-demo-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as log:
        logs.setup(settings.logging, stream=log)
        say(f"swgw demo: the story below; the gateway's logs go to {name}")
        try:
            return _run(settings, keep_running, Path(name))
        finally:
            logs.setup(settings.logging)  # back to stderr before the file closes


def _run(settings: Settings, keep_running: bool, log: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="swgw-demo-") as scratch:
        if settings.dedup.backend == "sqlite":
            dedup = dataclasses.replace(settings.dedup, path=Path(scratch) / settings.dedup.path.name)
            settings = dataclasses.replace(settings, dedup=dedup)
        if settings.receipts is None:  # a key made for this run only: no private key ships with swgw
            key = Path(scratch) / "demo-receipts.pem"
            key.write_bytes(
                ed25519.Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            settings = dataclasses.replace(settings, receipts=ReceiptSettings(signing_keys=(key,)))
        return asyncio.run(Demo(settings, keep_running, log).main())
