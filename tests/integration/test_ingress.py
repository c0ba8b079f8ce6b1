"""The spine against the real RabbitMQ: every answer of the wire contract, and what lands in the queue."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.broker.topology import Names
from gateway.messages import QueuedMessage
from tests.helpers import (
    OTHER_TOKEN,
    SCHEMAS,
    config_doc,
    envelope,
    get_all,
    run_gateway,
    with_message_id,
    write_settings,
)

pytestmark = pytest.mark.integration
VALID = sorted((SCHEMAS / "examples" / "CUSDEC" / "valid").glob("*.xml"))


@pytest.fixture
async def gw(tmp_path: Path, rabbit_url: str, prefix: str, cleanup: list[object]):  # type: ignore[no-untyped-def]
    settings = write_settings(tmp_path, config_doc(prefix))
    cleanup.append(settings)
    async with run_gateway(settings, role="ingress") as gateway:
        yield gateway


async def test_valid_message_is_confirmed_and_queued_with_its_properties(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes()
    status, receipt, _ = await gw.post(body)
    assert status == 202, receipt
    assert receipt["status"] == "queued"
    assert receipt["destination"] == "vnaccs"
    assert receipt["message_id"].startswith("VNNSW-CUSDEC-")
    assert receipt["received_at"].endswith("Z")

    queued = await get_all(Names(gw.settings.broker.prefix).queue("vnaccs"))
    assert len(queued) == 1
    raw = queued[0]
    assert raw.body == body  # byte-identical
    assert raw.delivery_mode == 2  # persistent
    assert raw.message_id == receipt["message_id"]
    msg = QueuedMessage.from_amqp(raw)
    assert (msg.message_type, msg.sender, msg.receiver, msg.destination) == ("CUSDEC", "VN-NSW", "VN-VNACCS", "vnaccs")
    assert msg.received_at == receipt["received_at"]
    assert (
        gw.metric(
            "swgw_ingest_messages_total",
            {"partner": "VN-NSW", "message_type": "CUSDEC", "outcome": "accepted"},
        )
        == 1
    )


async def test_every_valid_example_is_accepted(gw) -> None:  # type: ignore[no-untyped-def]
    for i, path in enumerate(VALID):
        status, receipt, _ = await gw.post(with_message_id(path.read_bytes(), f"EX-{i}"))
        assert status == 202, (path.name, receipt)


async def test_not_well_formed_gets_400_with_line_and_column(gw) -> None:  # type: ignore[no-untyped-def]
    body = b'<?xml version="1.0"?>\n<Envelope xmlns="urn:swgw:envelope:1">\n  <Header>\n</Envelope>\n'
    status, problem, headers = await gw.post(body)
    assert status == 400
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == 400
    assert "line 4" in problem["detail"]
    assert problem["errors"][0]["line"] == 4
    assert problem["errors"][0]["column"] > 0


async def test_not_an_envelope_gets_400(gw) -> None:  # type: ignore[no-untyped-def]
    status, problem, _ = await gw.post(b"<Invoice xmlns='urn:x'/>")
    assert status == 400
    assert problem["reason"] == "not_envelope"
    assert "Envelope" in problem["detail"]


@pytest.mark.parametrize(("token", "reason"), [(None, "missing_token"), ("wrong", "unknown_token")])
async def test_missing_or_unknown_token_gets_401(gw, token: str | None, reason: str) -> None:  # type: ignore[no-untyped-def]
    status, problem, _ = await gw.post(VALID[0].read_bytes(), token=token)
    assert status == 401
    assert problem["reason"] == reason
    assert gw.metric("swgw_auth_failures_total", {"reason": reason}) == 1


async def test_sender_other_than_the_token_owner_gets_403(gw) -> None:  # type: ignore[no-untyped-def]
    # TH-NSW's token, but the envelope says From=VN-NSW
    status, problem, _ = await gw.post(VALID[0].read_bytes(), token=OTHER_TOKEN)
    assert status == 403
    assert problem["reason"] == "sender_mismatch"


async def test_message_type_not_allowed_for_partner_gets_403(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes().replace(b"<From>VN-NSW</From>", b"<From>TH-NSW</From>")
    status, problem, _ = await gw.post(body, token=OTHER_TOKEN)
    assert status == 403
    assert problem["reason"] == "type_not_allowed"


async def test_declared_oversize_body_gets_413_before_reading(gw) -> None:  # type: ignore[no-untyped-def]
    big = b"<x>" + b"a" * 300_000 + b"</x>"
    status, problem, _ = await gw.post(big)
    assert status == 413
    assert "200000" in problem["detail"]


async def test_chunked_oversize_body_gets_413_while_streaming(gw) -> None:  # type: ignore[no-untyped-def]
    async def gen():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"a" * 10_000

    async with gw.session.post(
        f"{gw.url}/v1/messages",
        data=gen(),
        headers={"Content-Type": "application/xml", "Authorization": "Bearer test-token-vn-nsw"},
    ) as resp:
        assert resp.status == 413


async def test_wrong_content_type_gets_415(gw) -> None:  # type: ignore[no-untyped-def]
    status, problem, _ = await gw.post(VALID[0].read_bytes(), content_type="application/json")
    assert status == 415
    assert "application/xml" in problem["detail"]


async def test_text_xml_is_accepted(gw) -> None:  # type: ignore[no-untyped-def]
    status, _, _ = await gw.post(with_message_id(VALID[0].read_bytes(), "TXT-1"), content_type="text/xml")
    assert status == 202


async def test_envelope_schema_error_gets_422_with_path(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes().replace(b"<SentAt>", b"<SentAt>not-a-date", 1)
    status, problem, _ = await gw.post(body)
    assert status == 422
    assert problem["reason"] == "envelope_invalid"
    err = problem["errors"][0]
    assert err["path"] == "/Envelope/Header/SentAt"
    assert err["line"] == 8
    assert "dateTime" in err["reason"]


async def test_unknown_message_type_gets_422(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes().replace(b"<MessageType>CUSDEC<", b"<MessageType>NOPE<")
    status, problem, _ = await gw.post(body)
    assert status == 422
    assert problem["reason"] == "unknown_message_type"
    assert "CUSDEC" in problem["detail"]  # says what is accepted


async def test_payload_of_another_type_gets_422(gw) -> None:  # type: ignore[no-untyped-def]
    status, problem, _ = await gw.post(envelope('<Invoice xmlns="urn:oasis:x"/>'))
    assert status == 422
    assert problem["reason"] == "wrong_payload"
    assert problem["errors"][0]["path"] == "/Envelope/Body/Invoice"


async def test_invalid_payload_reports_the_right_lines(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes()
    lines = body.decode().split("\n")
    idx = next(i for i, line in enumerate(lines) if "<DeclarationOfficeID>" in line)
    lines[idx] = (
        lines[idx]
        .replace("<DeclarationOfficeID>", "<DeclarationOfficeIDX>")
        .replace("</DeclarationOfficeID>", "</DeclarationOfficeIDX>")
    )
    status, problem, _ = await gw.post("\n".join(lines).encode())
    assert status == 422
    assert problem["reason"] == "schema_invalid"
    first = problem["errors"][0]
    assert first["line"] == idx + 1
    assert first["path"].startswith("/Envelope/Body/Declaration/DeclarationOfficeIDX")
    assert first["column"] == lines[idx].index("<") + 1
    assert "not expected" in first["reason"]
    assert "{" not in first["reason"]  # no Clark notation noise


async def test_no_route_gets_422(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes().replace(b"<To>VN-VNACCS</To>", b"<To>XX-NOBODY</To>")
    status, problem, _ = await gw.post(body)
    assert status == 422
    assert problem["reason"] == "no_route"
    assert "XX-NOBODY" in problem["detail"]


async def test_unknown_path_is_a_problem_json_404(gw) -> None:  # type: ignore[no-untyped-def]
    async with gw.session.get(f"{gw.url}/nope") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_health_ready_and_metrics(gw) -> None:  # type: ignore[no-untyped-def]
    async with gw.session.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200
    async with gw.session.get(f"{gw.url}/readyz") as resp:
        detail = await resp.json()
        assert resp.status == 200, detail
        assert detail["broker"]["state"] == "connected"
        assert detail["schemas"]["compiled"] == ["CUSDEC"]
    await gw.post(b"junk")
    async with gw.session.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert 'swgw_ingest_messages_total{message_type="(unknown)",outcome="rejected",partner="VN-NSW"} 1.0' in text
    assert "swgw_broker_connected 1.0" in text


async def test_concurrent_posts_are_all_confirmed(gw) -> None:  # type: ignore[no-untyped-def]
    body = VALID[0].read_bytes()
    results = await asyncio.gather(*[gw.post(with_message_id(body, f"C-{i}")) for i in range(200)])
    assert [r[0] for r in results] == [202] * 200
    queued = await get_all(Names(gw.settings.broker.prefix).queue("vnaccs"))
    assert sorted(m.message_id for m in queued) == sorted(f"C-{i}" for i in range(200))


async def test_missing_destination_queue_is_503_not_202(gw) -> None:  # type: ignore[no-untyped-def]
    import aio_pika

    conn = await aio_pika.connect(gw.settings.broker.url.reveal())
    async with conn:
        ch = await conn.channel()
        await ch.queue_delete(Names(gw.settings.broker.prefix).queue("vnaccs"))
    status, problem, headers = await gw.post(VALID[0].read_bytes())
    assert status == 503
    assert problem["reason"] == "broker_unroutable"
    assert int(headers["Retry-After"]) > 0


async def test_problem_bodies_are_json_with_detail(gw) -> None:  # type: ignore[no-untyped-def]
    async with gw.session.post(
        f"{gw.url}/v1/messages", data=b"<a/>", headers={"Content-Type": "application/xml"}
    ) as resp:
        body = json.loads(await resp.text())
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["type"].startswith("urn:swgw:problem:")
