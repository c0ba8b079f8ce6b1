"""Partner security against a real gateway on loopback and the real RabbitMQ.

Mutual TLS with certificates made in the test, per-partner rate limits, load shedding,
slow bodies and slow headers, header and URL size bounds, authorisation by receiver,
message signatures kept intact in the queue, and failed logins logged without the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.broker.topology import Names
from gateway.intake import tls
from gateway.intake.limits import ConcurrencyGate
from gateway.observability.logs import JsonFormatter
from gateway.runtime.app import BROKER, INGRESS, create_app
from gateway.settings.model import Settings
from tests.fixtures.security.pki import Issued, issue, make_ca, sign_envelope, signing_identity
from tests.helpers import (
    OTHER_TOKEN,
    SCHEMAS,
    TOKEN,
    config_doc,
    get_all,
    run_gateway,
    sha,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration
CUSDEC = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))[0].read_bytes()
BOUND_S = 10.0  # upper bound for anything that must happen "soon"; never slept, only waited on


def message(n: int | str, sender: str = "VN-NSW", to: str = "VN-VNACCS") -> bytes:
    body = with_message_id(CUSDEC, f"SEC-{n}")
    return body.replace(b"<From>VN-NSW</From>", f"<From>{sender}</From>".encode()).replace(
        b"<To>VN-VNACCS</To>", f"<To>{to}</To>".encode()
    )


async def _settings(tmp_path: Path, prefix: str, cleanup: list[object], **kwargs: Any) -> Settings:
    settings = write_settings(tmp_path, config_doc(prefix, **kwargs))
    cleanup.append(settings)
    return settings


async def _raw(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _head(port: int, *, length: int, token: str = TOKEN, extra: str = "") -> bytes:
    return (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/xml\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


# -- mutual TLS -------------------------------------------------------------------------------


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = make_ca()
        self.ca_file = folder / "client-ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.server_cert, self.server_key = issue(self.ca, "gateway", usage="server").write(folder, "server")
        self.clients = {cn: issue(self.ca, cn) for cn in ("TH-NSW", "KH-NSW", "VN-NSW")}
        self.folder = folder

    def client_context(self, who: Issued | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))  # the server cert is from the same CA
        if who is not None:
            cert, key = who.write(self.folder, f"client-{who.cert.serial_number}")
            ctx.load_cert_chain(cert, key)
        return ctx


@contextlib.asynccontextmanager
async def run_tls_gateway(settings: Settings) -> AsyncIterator[str]:
    app = create_app(settings, registry=CollectorRegistry(), role="ingress")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(settings.server))
    await site.start()
    try:
        await asyncio.wait_for(app[BROKER].connected.wait(), timeout=20)
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _post_tls(
    url: str, ctx: ssl.SSLContext, body: bytes, token: str | None = None
) -> tuple[int, Mapping[str, Any]]:
    headers = {"Content-Type": "application/xml"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=20)) as s,
        s.post(f"{url}/v1/messages", data=body, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.text())


def _tls_config(pki: Pki, client_cert: str = "optional") -> dict[str, Any]:
    return {
        "server": {
            "tls_cert": str(pki.server_cert),
            "tls_key": str(pki.server_key),
            "client_ca": str(pki.ca_file),
            "client_cert": client_cert,
        },
        "partners": [
            {"id": "VN-NSW", "token_sha256": [sha(TOKEN)]},
            {"id": "TH-NSW", "auth": "mtls", "cert_fingerprint_sha256": pki.clients["TH-NSW"].fingerprint},
            {
                "id": "KH-NSW",
                "auth": "both",
                "token_sha256": [sha("kh-token")],
                "cert_subject": pki.clients["KH-NSW"].subject,
            },
        ],
    }


async def test_mtls_maps_certificates_to_partners(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    pki = Pki(tmp_path)
    settings = await _settings(tmp_path, prefix, cleanup, **_tls_config(pki))
    async with run_tls_gateway(settings) as url:
        th = pki.client_context(pki.clients["TH-NSW"])
        kh = pki.client_context(pki.clients["KH-NSW"])
        anonymous = pki.client_context(None)

        status, receipt = await _post_tls(url, th, message(1, "TH-NSW"))  # certificate alone
        assert status == 202, receipt
        status, problem = await _post_tls(url, anonymous, message(2, "TH-NSW"))
        assert (status, problem["reason"]) == (401, "missing_token")
        status, receipt = await _post_tls(url, anonymous, message(3), token=TOKEN)  # token partner, no cert
        assert status == 202, receipt
        status, problem = await _post_tls(url, anonymous, message(4, "KH-NSW"), token="kh-token")
        assert (status, problem["reason"]) == (401, "certificate_mismatch")
        status, problem = await _post_tls(url, th, message(5, "KH-NSW"), token="kh-token")  # someone else's cert
        assert (status, problem["reason"]) == (401, "certificate_mismatch")
        status, receipt = await _post_tls(url, kh, message(6, "KH-NSW"), token="kh-token")
        assert status == 202, receipt
        status, problem = await _post_tls(url, th, message(7, "KH-NSW"))  # TH's cert, KH's From
        assert (status, problem["reason"]) == (403, "sender_mismatch")


async def test_a_certificate_from_another_ca_fails_the_handshake(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    pki = Pki(tmp_path)
    settings = await _settings(tmp_path, prefix, cleanup, **_tls_config(pki))
    rogue = issue(make_ca("rogue CA"), "TH-NSW")  # same subject, wrong issuer
    async with run_tls_gateway(settings) as url:
        with pytest.raises(aiohttp.ClientError):
            await _post_tls(url, pki.client_context(rogue), message(1, "TH-NSW"))


async def test_required_client_certificates_refuse_connections_without_one(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    pki = Pki(tmp_path)
    settings = await _settings(tmp_path, prefix, cleanup, **_tls_config(pki, client_cert="required"))
    async with run_tls_gateway(settings) as url:
        with pytest.raises(aiohttp.ClientError):
            await _post_tls(url, pki.client_context(None), message(1), token=TOKEN)
        status, receipt = await _post_tls(url, pki.client_context(pki.clients["VN-NSW"]), message(2), token=TOKEN)
        assert status == 202, receipt


# -- rate limits and load shedding --------------------------------------------------------------


async def test_a_partner_over_its_rate_gets_429_and_others_are_unaffected(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    partners = [
        {"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "rate_per_s": 0.01, "burst": 2},
        {"id": "TH-NSW", "token_sha256": [sha(OTHER_TOKEN)]},
    ]
    settings = await _settings(tmp_path, prefix, cleanup, partners=partners)
    async with run_gateway(settings, role="ingress") as gw:
        for i in range(2):
            status, receipt, _ = await gw.post(message(i))
            assert status == 202, receipt
        status, problem, headers = await gw.post(message(2))
        assert (status, problem["reason"]) == (429, "rate_limited")
        assert int(headers["Retry-After"]) >= 1
        status, receipt, _ = await gw.post(message(3, "TH-NSW"), token=OTHER_TOKEN)
        assert status == 202, receipt

        # Refused before the body is read: only headers are sent, yet the answer comes.
        port = _port(gw.url)
        reader, writer = await _raw(port, _head(port, length=150_000))
        try:
            status_line = await asyncio.wait_for(reader.readline(), BOUND_S)
        finally:
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 429"), status_line


async def test_a_partner_resending_its_backlog_with_default_limits_gets_no_429(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    # After its own outage a partner sends everything it held at once; with the default
    # config (no rate_per_s) that burst is accepted, bounded only by [server] max_concurrency.
    partners = [{"id": "VN-NSW", "token_sha256": [sha(TOKEN)]}]
    settings = await _settings(tmp_path, prefix, cleanup, partners=partners)
    async with run_gateway(settings, role="ingress") as gw:
        sem = asyncio.Semaphore(64)

        async def one(n: int) -> int:
            async with sem:
                status, _, _ = await gw.post(message(f"BACKLOG-{n}"))
                return status

        statuses = await asyncio.gather(*(one(n) for n in range(500)))
    assert statuses.count(202) == 500, {s: statuses.count(s) for s in set(statuses)}


class ObservedGate(ConcurrencyGate):
    """The real gate, telling the test when it is full and when it has emptied again."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.full, self.empty = asyncio.Event(), asyncio.Event()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with super().slot():
            if self.in_flight == self.limit:
                self.full.set()
            try:
                yield
            finally:
                if self.in_flight == 1:
                    self.empty.set()


async def test_requests_beyond_max_concurrency_are_shed_with_503(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = await _settings(tmp_path, prefix, cleanup, server={"max_concurrency": 2})
    async with run_gateway(settings, role="ingress") as gw:
        gate = gw.app[INGRESS].gate = ObservedGate(settings.server.max_concurrency)
        port = _port(gw.url)
        held = [await _raw(port, _head(port, length=5_000) + b"<Envelope") for _ in range(2)]
        try:
            await asyncio.wait_for(gate.full.wait(), BOUND_S)  # both inside, waiting for the rest of their bodies
            status, problem, headers = await gw.post(message(1))
            assert (status, problem["reason"]) == (503, "overloaded")
            assert headers["Retry-After"] == "1"
            async with gw.session.get(f"{gw.url}/healthz") as resp:  # probes are not shed
                assert resp.status == 200
        finally:
            for _, writer in held:
                writer.close()
        await asyncio.wait_for(gate.empty.wait(), BOUND_S)
        status, receipt, _ = await gw.post(message(2))
        assert status == 202, receipt


# -- slowloris and size bounds --------------------------------------------------------------------


async def test_a_body_trickled_in_is_cut_off_with_408(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = await _settings(tmp_path, prefix, cleanup, server={"request_timeout_s": 1})
    async with run_gateway(settings, role="ingress") as gw:
        port = _port(gw.url)
        reader, writer = await _raw(port, _head(port, length=10_000))

        async def trickle() -> None:  # the attack: a byte now and then, never the whole body
            with contextlib.suppress(ConnectionError):
                for _ in range(10_000):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())
        try:
            status_line = await asyncio.wait_for(reader.readline(), BOUND_S)
        finally:
            sender.cancel()
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert gw.app[INGRESS].gate.in_flight == 0


async def test_headers_trickled_in_get_the_connection_closed(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    settings = await _settings(tmp_path, prefix, cleanup, server={"idle_timeout_s": 1})
    async with run_gateway(settings, role="ingress") as gw:
        reader, writer = await _raw(_port(gw.url), b"POST /v1/messages HTTP/1.1\r\nX-Slow: ")

        async def trickle() -> None:  # one header value, a byte at a time: no size or count limit trips
            with contextlib.suppress(ConnectionError):
                for _ in range(4_000):
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(BOUND_S):
                with contextlib.suppress(ConnectionError):
                    while await reader.read(1024):  # aiohttp may answer 400 to the half request; then EOF
                        pass
        finally:
            sender.cancel()
            writer.close()


@pytest.mark.parametrize(
    ("server", "header_bytes"),
    [({}, 20_000), ({"max_header_bytes": 4096}, 6_000)],  # default, and the configured bound is applied
)
async def test_oversized_headers_and_urls_are_refused_without_a_crash(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], server: dict[str, Any], header_bytes: int
) -> None:
    settings = await _settings(tmp_path, prefix, cleanup, server=server)
    async with run_gateway(settings, role="ingress") as gw:
        headers = {"Content-Type": "application/xml", "Authorization": f"Bearer {TOKEN}", "X-Big": "a" * header_bytes}
        async with gw.session.post(f"{gw.url}/v1/messages", data=message(1), headers=headers) as resp:
            assert resp.status in (400, 431)  # refused by the HTTP parser, before any handler runs
        async with gw.session.get(f"{gw.url}/healthz?{'q' * header_bytes}") as resp:
            assert resp.status in (400, 414, 431)
        status, receipt, _ = await gw.post(message(2), headers={"X-Fine": "a" * 2000})  # still serving
        assert status == 202, receipt


# -- authorisation, signatures, logs ----------------------------------------------------------


async def test_a_partner_may_only_address_its_receivers(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    partners = [{"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "receivers": ["VN-VNACCS"], "message_types": ["CUSDEC"]}]
    routes = [
        {"to": "VN-VNACCS", "message_type": "CUSDEC", "destination": "vnaccs"},
        {"to": "VN-OTHER", "message_type": "CUSDEC", "destination": "vnaccs"},
    ]
    settings = await _settings(tmp_path, prefix, cleanup, partners=partners, routes=routes)
    async with run_gateway(settings, role="ingress") as gw:
        status, problem, _ = await gw.post(message(1, to="VN-OTHER"))  # routable, but not for this partner
        assert (status, problem["reason"]) == (403, "receiver_not_allowed")
        status, receipt, _ = await gw.post(message(2))
        assert status == 202, receipt


async def test_signed_messages_are_verified_and_queued_with_the_signature_intact(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]
) -> None:
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    signer = signing_identity("VN-NSW")
    (tmp_path / "vn-nsw-signing.pem").write_bytes(signer.cert_pem)
    partners = [{"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "signing_cert": "vn-nsw-signing.pem"}]
    settings = await _settings(tmp_path, prefix, cleanup, partners=partners)
    async with run_gateway(settings, role="ingress") as gw:
        signed = sign_envelope(message(1), signer)
        status, receipt, _ = await gw.post(signed)
        assert status == 202, receipt

        status, problem, _ = await gw.post(message(2))
        assert (status, problem["reason"]) == (403, "signature_missing")
        tampered = sign_envelope(message(3), signer).replace(b"SEC-3", b"SEC-4")
        status, problem, _ = await gw.post(tampered)
        assert (status, problem["reason"]) == (403, "signature_invalid")
        assert "VN-NSW" in problem["detail"]

        queued = await get_all(Names(settings.broker.prefix).queue("vnaccs"))
        assert [m.body for m in queued] == [signed]  # byte-identical: the backend can verify it too
        XMLVerifier().verify(queued[0].body, x509_cert=signer.cert, expect_config=SignatureConfiguration(location="./"))


async def test_failed_logins_are_counted_and_logged_without_the_token(
    tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    settings = await _settings(tmp_path, prefix, cleanup)
    secret = "guessed-secret-token-8431"
    async with run_gateway(settings, role="ingress") as gw:
        with caplog.at_level(logging.INFO):
            status, problem, _ = await gw.post(message(1), token=secret)
        assert (status, problem["reason"]) == (401, "unknown_token")
        assert secret not in json.dumps(problem)
        assert gw.metric("swgw_auth_failures_total", {"reason": "unknown_token"}) == 1
    lines = [JsonFormatter().format(r) for r in caplog.records]
    rejected = [json.loads(line) for line in lines if '"event": "rejected"' in line]
    assert rejected
    assert (rejected[0]["reason"], rejected[0]["status"]) == ("unknown_token", 401)
    assert not any(secret in line for line in lines)
