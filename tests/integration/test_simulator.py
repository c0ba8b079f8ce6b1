"""gateway.tools.simulator over real loopback TCP with a real aiohttp client.

Timing is never asserted. Where a mode involves time (slow, flap) the simulator gets a
step-controlled sleep, so the test decides when the pause ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.tools.simulate import add_arguments, mode_from_args, run
from gateway.tools.simulator import Mode, Simulator

ROOT = Path(__file__).resolve().parents[2]
XML = b"<Envelope><Id>m-1</Id></Envelope>"


class StepSleep:
    """A sleep that blocks until the test releases it; `next()` returns (seconds, release)."""

    def __init__(self) -> None:
        self.pending: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.put_nowait((seconds, fut))
        await fut

    async def next(self) -> tuple[float, asyncio.Future[None]]:
        return await asyncio.wait_for(self.pending.get(), timeout=5)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as s:
        yield s


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as c:
        yield c


def headers(mid: str, mtype: str = "CUSDEC", attempt: int = 1) -> dict[str, str]:
    return {
        "Content-Type": "application/xml",
        "X-Message-Id": mid,
        "X-Message-Type": mtype,
        "X-Message-From": "broker-a",
        "X-Delivery-Attempt": str(attempt),
    }


async def post(
    c: aiohttp.ClientSession, sim: Simulator, mid: str, mtype: str = "CUSDEC", body: bytes = XML, attempt: int = 1
) -> tuple[int, dict[str, object], dict[str, str]]:
    async with c.post(sim.url, data=body, headers=headers(mid, mtype, attempt)) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def assert_refused(port: int) -> None:
    """A fresh TCP connect must be refused outright: no HTTP, not a timeout."""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


# --- recording -----------------------------------------------------------------------------


async def test_records_ids_metadata_and_duplicates(sim: Simulator, client: aiohttp.ClientSession) -> None:
    status, body, _ = await post(client, sim, "m-1")
    assert (status, body) == (200, {"status": "accepted", "message_id": "m-1", "duplicate": False})
    await post(client, sim, "m-2", "CUSRES")
    status, body, _ = await post(client, sim, "m-1", attempt=2)
    assert (status, body["duplicate"]) == (200, True)
    await post(client, sim, "m-1", body=b"<changed/>")  # same id, different bytes: a gateway bug

    r = sim.received
    assert (r.total, r.unique, r.duplicates, r.conflicts, r.rejected) == (4, 2, 2, 1, 0)
    assert r.by_type == {"CUSDEC": 1, "CUSRES": 1}
    assert sim.ids == ["m-1", "m-2"]
    first = sim.deliveries[0]
    assert (first.message_id, first.message_type, first.sender, first.attempt) == ("m-1", "CUSDEC", "broker-a", "1")
    assert (first.size, first.sha256) == (len(XML), hashlib.sha256(XML).hexdigest())
    assert sim.deliveries[2].attempt == "2"


async def test_control_api_reports_and_resets(sim: Simulator, client: aiohttp.ClientSession) -> None:
    for mid in ("a", "b", "a"):
        await post(client, sim, mid)
    async with client.get(f"{sim.control_url}/_sim/received") as r:
        summary = await r.json()
    assert summary == {
        "total": 3,
        "unique": 2,
        "duplicates": 1,
        "conflicts": 0,
        "rejected": 0,
        "by_type": {"CUSDEC": 2},
    }
    async with client.get(f"{sim.control_url}/_sim/received/ids") as r:
        assert await r.json() == {"ids": ["a", "b"]}
    async with client.post(f"{sim.control_url}/_sim/reset") as r:
        assert r.status == 200
    assert sim.received.total == 0
    assert sim.ids == []


async def test_missing_message_id_is_a_400(sim: Simulator, client: aiohttp.ClientSession) -> None:
    async with client.post(sim.url, data=XML, headers={"Content-Type": "application/xml"}) as r:
        assert r.status == 400
        assert r.content_type == "application/problem+json"
    assert sim.received.rejected == 1
    assert sim.received.total == 0


async def test_wait_for_wakes_on_arrivals_and_times_out(sim: Simulator, client: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(sim.wait_for(2, timeout_s=10))
    await post(client, sim, "x")
    await post(client, sim, "x")
    assert not waiter.done()
    await post(client, sim, "y")
    received = await waiter
    assert received.unique == 2
    with pytest.raises(TimeoutError):
        await sim.wait_for(3, timeout_s=0.01)


async def test_health_endpoints(sim: Simulator, client: aiohttp.ClientSession) -> None:
    for url in (f"http://127.0.0.1:{sim.port}/health", sim.url):
        async with client.get(url) as r:
            assert r.status == 200


# --- down ------------------------------------------------------------------------------------


async def test_down_refuses_tcp_and_comes_back_on_the_same_port(sim: Simulator, client: aiohttp.ClientSession) -> None:
    port = sim.port
    assert (await post(client, sim, "before"))[0] == 200  # leaves a keep-alive connection in the pool

    await sim.set_mode("down")
    assert not sim.listening
    await assert_refused(port)
    # The pooled keep-alive connection must not keep answering either.
    with pytest.raises(aiohttp.ClientError):
        await post(client, sim, "during")
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await post(fresh, sim, "during")
    assert isinstance(info.value.os_error, ConnectionRefusedError)
    # The control port stays reachable while the data port is down.
    async with client.get(f"{sim.control_url}/_sim/state") as r:
        state = await r.json()
    assert state["listening"] is False
    assert state["mode"]["mode"] == "down"

    await sim.set_mode("up")
    assert sim.port == port
    assert (await post(client, sim, "after"))[0] == 200
    assert sim.ids == ["before", "after"]


async def test_down_and_up_through_the_control_api(sim: Simulator, client: aiohttp.ClientSession) -> None:
    async with client.post(f"{sim.control_url}/_sim/mode", json={"mode": "down"}) as r:
        assert r.status == 200
    await assert_refused(sim.port)
    async with client.post(f"{sim.control_url}/_sim/mode", json={"mode": "up"}) as r:
        assert (await r.json())["listening"] is True
    async with aiohttp.ClientSession() as fresh:
        assert (await post(fresh, sim, "m"))[0] == 200


async def test_starting_down_with_port_zero_still_reserves_a_port(client: aiohttp.ClientSession) -> None:
    async with Simulator(mode=Mode("down")) as sim:
        assert sim.port != 0
        await assert_refused(sim.port)
        await sim.set_mode("up")
        assert (await post(client, sim, "m"))[0] == 200


async def test_down_kills_requests_in_flight(client: aiohttp.ClientSession) -> None:
    step = StepSleep()
    async with Simulator(mode=Mode("slow", delay_ms=1000), sleep=step) as sim:
        request = asyncio.create_task(post(client, sim, "lost"))
        _, release = await step.next()
        await sim.set_mode("down")
        with pytest.raises(aiohttp.ClientError):
            await request
        assert release.cancelled()
        assert sim.received.total == 0


# --- error, slow, reject, flap ------------------------------------------------------------


async def test_error_mode_answers_5xx_with_retry_after(sim: Simulator, client: aiohttp.ClientSession) -> None:
    await sim.set_mode("error", status=503, retry_after="7")
    status, body, hdrs = await post(client, sim, "m")
    assert (status, hdrs["Retry-After"], body["status"]) == (503, "7", 503)
    async with client.get(f"http://127.0.0.1:{sim.port}/health") as r:
        assert r.status == 503
    await sim.set_mode("error", status=500)
    status, _, hdrs = await post(client, sim, "m")
    assert status == 500
    assert "Retry-After" not in hdrs
    assert sim.received.total == 0


async def test_slow_mode_holds_the_answer_for_the_delay(client: aiohttp.ClientSession) -> None:
    step = StepSleep()
    async with Simulator(sleep=step) as sim:
        await sim.set_mode("slow", delay_ms=250)
        request = asyncio.create_task(post(client, sim, "m"))
        seconds, release = await step.next()
        assert seconds == 0.25
        assert not request.done()
        assert sim.received.total == 0
        release.set_result(None)
        assert (await request)[0] == 200
        assert sim.ids == ["m"]


async def test_slow_mode_records_even_when_the_client_gave_up(sim: Simulator) -> None:
    await sim.set_mode("slow", delay_ms=300)
    # The client's 50 ms deadline is scheduled before the server's 300 ms sleep starts, on
    # the same loop, so it always fires first: no race, no timing assert.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as impatient:
        with pytest.raises(asyncio.TimeoutError):
            await post(impatient, sim, "committed")
    received = await sim.wait_for(1, timeout_s=10)
    assert received.unique == 1  # a retry now would be a duplicate: what dedup headers are for


async def test_reject_mode_rejects_only_listed_types(sim: Simulator, client: aiohttp.ClientSession) -> None:
    await sim.set_mode("reject", reject_types=frozenset({"CUSDEC"}))
    status, body, hdrs = await post(client, sim, "bad", "CUSDEC")
    assert status == 400
    assert hdrs["Content-Type"].startswith("application/problem+json")
    assert "CUSDEC" in str(body["detail"])
    assert (await post(client, sim, "good", "CUSRES"))[0] == 200
    async with client.get(f"http://127.0.0.1:{sim.port}/health") as r:
        assert r.status == 200
    assert sim.ids == ["good"]
    assert sim.received.rejected == 1


async def test_flap_alternates_up_and_down_on_the_same_port(client: aiohttp.ClientSession) -> None:
    step = StepSleep()
    async with Simulator(sleep=step) as sim:
        port = sim.port
        await sim.set_mode("flap", flap_s=30)
        for _ in range(2):
            seconds, release = await step.next()  # the flapper has just opened the port
            assert (seconds, sim.listening) == (30, True)
            async with aiohttp.ClientSession() as fresh:
                assert (await post(fresh, sim, "m"))[0] == 200
            release.set_result(None)
            _, release = await step.next()  # ...and now closed it
            assert not sim.listening
            await assert_refused(port)
            release.set_result(None)
        await sim.set_mode("up")
        assert sim.listening
        assert sim.port == port


async def test_going_down_while_connections_arrive_leaves_no_socket_unclosed(sim: Simulator) -> None:
    # asyncio (3.11) drops a connection accepted just before its server closes without closing
    # its socket (Server._attach asserts inside the transport, silently). The drills saw it as an
    # "unclosed transport" ResourceWarning after a flapping backend; here it is caught at once.
    # Every connection the simulator accepted must be closed by going down, answered or not.
    unraisable: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_value!r} in {u.object!r}")
    stop = asyncio.Event()

    async def connect_again_and_again() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", sim.port)
                writer.close()
            await asyncio.sleep(0)

    clients = [asyncio.create_task(connect_again_and_again()) for _ in range(20)]
    try:
        for _ in range(150):
            await sim.set_mode("down")
            await sim.set_mode("up")
            for _ in range(5):  # let the clients' connects reach the listener
                await asyncio.sleep(0)
        stop.set()
        await asyncio.gather(*clients)
        await sim.set_mode("down")
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert not [u for u in unraisable if "unclosed" in u], unraisable[:3]


# --- sick, poison ids, counters -----------------------------------------------------------


async def test_sick_mode_health_answers_200_while_posts_fail(sim: Simulator, client: aiohttp.ClientSession) -> None:
    await sim.set_mode("sick")  # the load balancer that lies
    for url in (f"http://127.0.0.1:{sim.port}/health", sim.url):
        async with client.get(url) as r:
            assert r.status == 200
    status, body, hdrs = await post(client, sim, "m")
    assert (status, body["status"]) == (503, 503)
    assert hdrs["Content-Type"].startswith("application/problem+json")
    assert "sick" in str(body["detail"])
    await sim.set_mode("sick", status=500, retry_after="9")
    status, _, hdrs = await post(client, sim, "m")
    assert (status, hdrs["Retry-After"]) == (500, "9")
    assert sim.received.total == 0
    assert (sim.health_hits, sim.posts_for("m")) == (2, 2)


@pytest.mark.parametrize("mode", [Mode("up"), Mode("reject", reject_types=frozenset({"OTHER"})), Mode("slow")])
async def test_fail_ids_always_fail_in_any_mode(mode: Mode, sim: Simulator, client: aiohttp.ClientSession) -> None:
    await sim.set_mode(mode.name, reject_types=mode.reject_types, fail_ids=frozenset({"poison", "toxic"}))
    for _ in range(3):
        status, body, hdrs = await post(client, sim, "poison")
        assert (status, body["status"]) == (500, 500)
        assert hdrs["Content-Type"].startswith("application/problem+json")
        assert "poison" in str(body["detail"])
    assert (await post(client, sim, "healthy"))[0] == 200
    await sim.set_mode(mode.name, reject_types=mode.reject_types, fail_ids=frozenset({"poison"}), fail_status=400)
    assert (await post(client, sim, "poison"))[0] == 400  # a 4xx poison: the gateway parks it
    assert (await post(client, sim, "toxic"))[0] == 200  # no longer listed
    async with client.get(f"http://127.0.0.1:{sim.port}/health") as r:
        assert r.status == 200  # a poison message says nothing about the backend's health
    assert sim.ids == ["healthy", "toxic"]
    assert sim.posts_for("poison") == 4
    assert sim.received.rejected == 0  # only the reject mode's own 400s are counted there


async def test_counts_health_probes_and_posts_per_id_including_failures(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    await post(client, sim, "a")
    await post(client, sim, "a", attempt=2)  # a duplicate is a POST too
    await sim.set_mode("error", status=500)
    await post(client, sim, "a", attempt=3)
    await post(client, sim, "b")
    async with client.get(f"http://127.0.0.1:{sim.port}/health") as r:
        assert r.status == 503  # counted whatever it answered
    await sim.set_mode("up", fail_ids=frozenset({"c"}))
    await post(client, sim, "c")
    async with client.post(sim.url, data=XML, headers={"Content-Type": "application/xml"}) as r:
        assert r.status == 400  # no id: counted in the total only
    for url in (f"http://127.0.0.1:{sim.port}/health", sim.url):
        async with client.get(url) as r:
            assert r.status == 200

    assert (sim.posts_for("a"), sim.posts_for("b"), sim.posts_for("c"), sim.posts_for("never")) == (3, 1, 1, 0)
    assert sim.post_counts == {"a": 3, "b": 1, "c": 1}
    assert (sim.posts, sim.health_hits) == (6, 3)
    async with client.get(f"{sim.control_url}/_sim/state") as r:
        state = await r.json()
    assert (state["health_hits"], state["posts"]) == (3, 6)
    assert state["mode"]["fail_ids"] == ["c"]
    async with client.get(f"{sim.control_url}/_sim/posts") as r:
        assert await r.json() == {"total": 6, "health_hits": 3, "by_id": {"a": 3, "b": 1, "c": 1}}
    async with client.get(f"{sim.control_url}/_sim/posts", params={"id": "a"}) as r:
        assert await r.json() == {"id": "a", "posts": 3}

    async with client.post(f"{sim.control_url}/_sim/reset") as r:
        assert r.status == 200
    assert (sim.posts, sim.health_hits, sim.post_counts) == (0, 0, {})


async def test_slow_posts_are_counted_when_they_arrive(client: aiohttp.ClientSession) -> None:
    step = StepSleep()
    async with Simulator(sleep=step) as sim:
        await sim.set_mode("slow", delay_ms=1000)
        request = asyncio.create_task(post(client, sim, "m"))
        await step.next()  # the handler is asleep: the attempt was made, nothing recorded yet
        assert (sim.posts_for("m"), sim.received.total) == (1, 0)
        await sim.set_mode("down")  # killed mid-request, as a crash would: still an attempt
        with pytest.raises(aiohttp.ClientError):
            await request
        assert (sim.posts_for("m"), sim.received.total) == (1, 0)


async def test_control_api_sets_sick_mode_and_poison_ids(sim: Simulator, client: aiohttp.ClientSession) -> None:
    payload = {"mode": "sick", "status": 502, "fail_ids": ["p1", "p2"], "fail_status": 400}
    async with client.post(f"{sim.control_url}/_sim/mode", json=payload) as r:
        assert r.status == 200
        state = await r.json()
    assert state["mode"] == {
        "mode": "sick",
        "status": 502,
        "retry_after": None,
        "delay_ms": 0,
        "reject_types": [],
        "flap_s": 5.0,
        "fail_ids": ["p1", "p2"],
        "fail_status": 400,
    }
    assert sim.mode == Mode("sick", status=502, fail_ids=frozenset({"p1", "p2"}), fail_status=400)
    assert (await post(client, sim, "m"))[0] == 502
    async with client.post(f"{sim.control_url}/_sim/mode", json={"mode": "up", "fail_ids": ["p1"]}) as r:
        assert r.status == 200
    assert (await post(client, sim, "p1"))[0] == 500
    assert (await post(client, sim, "p2"))[0] == 200


# --- control API validation and CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"mode": "sideways"}, "mode"),
        ({"mode": "error", "status": 200}, "status"),
        ({"mode": "error", "status": True}, "status"),
        ({"mode": "error", "retry_after": False}, "retry_after"),
        ({"mode": "flap", "flap_s": 0}, "flap_s"),
        ({"mode": "slow", "delay_ms": "fast"}, "delay_ms"),
        ({"mode": "reject", "reject_types": "CUSDEC"}, "reject_types"),
        ({"mode": "up", "colour": "red"}, "colour"),
        ({"mode": "sick", "status": 200}, "status"),
        ({"mode": "up", "fail_ids": "p1"}, "fail_ids"),
        ({"mode": "up", "fail_ids": [1, 2]}, "fail_ids"),
        ({"mode": "up", "fail_status": 200}, "fail_status"),
        ({"mode": "up", "fail_status": "500"}, "fail_status"),
        ({"mode": "up", "fail_id": ["p1"]}, "fail_id"),
        (["up"], "JSON object"),
    ],
)
async def test_control_api_rejects_bad_modes(
    sim: Simulator, client: aiohttp.ClientSession, payload: object, key: str
) -> None:
    async with client.post(f"{sim.control_url}/_sim/mode", json=payload) as r:
        assert r.status == 400
        assert key in (await r.json())["error"]
    assert sim.mode == Mode()


async def test_control_api_sets_error_mode(sim: Simulator, client: aiohttp.ClientSession) -> None:
    payload = {"mode": "error", "status": 429, "retry_after": 5}
    async with client.post(f"{sim.control_url}/_sim/mode", json=payload) as r:
        assert (await r.json())["mode"]["retry_after"] == "5"
    assert sim.mode == Mode("error", status=429, retry_after="5")
    status, _, hdrs = await post(client, sim, "m")
    assert (status, hdrs["Retry-After"]) == (429, "5")


def test_cli_flags_build_the_starting_mode() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--mode", "reject", "--reject-type", "A", "--reject-type", "B", "--port", "0"])
    assert mode_from_args(ns) == Mode("reject", reject_types=frozenset({"A", "B"}))
    assert (ns.port, ns.control_port, ns.host) == (0, 8082, "127.0.0.1")


def test_cli_flags_build_sick_mode_with_poison_ids() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--mode", "sick", "--status", "502", "--fail-id", "P1", "--fail-id", "P2", "--fail-status", "400"]
    assert mode_from_args(parser.parse_args(argv)) == Mode(
        "sick", status=502, fail_ids=frozenset({"P1", "P2"}), fail_status=400
    )
    assert mode_from_args(parser.parse_args([])) == Mode()  # no poison ids, 500 when some are given


def test_cli_refuses_a_bad_starting_mode(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--mode", "error", "--status", "200"])) == 2
    assert "status: 200 must be an integer 400-599" in capsys.readouterr().out
    assert run(parser.parse_args(["--fail-id", "P1", "--fail-status", "302"])) == 2
    assert "fail_status: 302 must be an integer 400-599" in capsys.readouterr().out


async def test_command_line_serves_until_sigterm(client: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["-m", "gateway.tools.simulate", "--port", "0", "--control-port", "0", "--mode", "reject"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, "--reject-type", "CUSDEC", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        data_url, control_url = re.findall(r"http://127\.0\.0\.1:\d+[^\s,]*", line)
        async with client.post(data_url, data=XML, headers=headers("m", "CUSDEC")) as r:
            assert r.status == 400
        async with client.get(control_url) as r:
            assert (await r.json())["mode"]["reject_types"] == ["CUSDEC"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
