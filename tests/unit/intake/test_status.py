"""GET /v1/messages/{id} on a real listener with a stand-in journal: who may see what, and every refusal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gateway.errors import StoreError
from gateway.intake.identity import Authenticator
from gateway.intake.limits import PartnerRateLimiter
from gateway.intake.status import StatusApi
from gateway.journal.model import JournalReader, MessageRecord, Status
from gateway.observability.metrics import Metrics
from gateway.observability.problems import problem_middleware
from gateway.settings.model import Partner
from tests.helpers import OTHER_TOKEN, TOKEN, sha

PARTNERS = (
    Partner(id="VN-NSW", token_sha256=(sha(TOKEN),), rate_per_s=0.001, burst=5),
    Partner(id="TH-NSW", token_sha256=(sha(OTHER_TOKEN),)),
)
RECORD = MessageRecord(
    sender="VN-NSW",
    message_id="S-1",
    message_type="CUSDEC",
    receiver="VN-VNACCS",
    destination="vnaccs",
    size=10,
    sha256="ab",
    received_at="2027-01-15T08:00:00.000Z",
    status=Status.PARKED,
    attempts=3,
    delivered_at=None,
    parked_reason="rejected: <backend's words>",
    updated_at="2027-01-15T08:01:00.000Z",
)


class Journal:
    """Looks records up by sender *and* id, as the store does (VN-NSW's S-1 by default); BOOM fails."""

    def __init__(self, records: dict[tuple[str, str], MessageRecord] | None = None) -> None:
        self.records = {("VN-NSW", "S-1"): RECORD} if records is None else records
        self.asked: list[tuple[str, str]] = []

    async def message(self, sender: str, message_id: str) -> MessageRecord | None:
        self.asked.append((sender, message_id))
        if message_id == "BOOM":
            raise StoreError("database is locked")
        return self.records.get((sender, message_id))


async def client_for(reader: Journal | None) -> TestClient[web.Request, web.Application]:
    metrics = Metrics(CollectorRegistry())
    api = StatusApi(Authenticator(PARTNERS), PartnerRateLimiter(PARTNERS), cast(JournalReader | None, reader), metrics)
    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/v1/messages/{message_id}", api.handle)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def journal() -> Journal:
    return Journal()


@pytest.fixture
async def client(journal: Journal) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    c = await client_for(journal)
    yield c
    await c.close()


async def get(
    client: TestClient[web.Request, web.Application], message_id: str, token: str | None = TOKEN
) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.get(f"/v1/messages/{message_id}", headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_the_sender_sees_its_message_without_the_parked_reason(
    client: TestClient[web.Request, web.Application],
) -> None:
    status, text, headers = await get(client, "S-1")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert json.loads(text) == {
        "message_id": "S-1",
        "status": "parked",
        "message_type": "CUSDEC",
        "receiver": "VN-VNACCS",
        "destination": "vnaccs",
        "received_at": "2027-01-15T08:00:00.000Z",
        "delivered_at": None,
        "attempts": 3,
        "updated_at": "2027-01-15T08:01:00.000Z",
    }


async def test_another_partners_id_answers_like_an_id_nobody_sent_and_reads_only_the_askers_key(
    client: TestClient[web.Request, web.Application], journal: Journal
) -> None:
    theirs = await get(client, "S-1", token=OTHER_TOKEN)
    assert journal.asked == [("TH-NSW", "S-1")]  # the asker's own key: VN-NSW's record is never read
    assert theirs[0] == 404
    assert json.loads(theirs[1])["reason"] == "message_not_found"
    nobody_sent_it = await client_for(Journal(records={}))
    try:
        assert (await get(nobody_sent_it, "S-1", token=OTHER_TOKEN))[1] == theirs[1]  # byte for byte
        assert (await get(nobody_sent_it, "S-1"))[1] == theirs[1]  # whoever asks
    finally:
        await nobody_sent_it.close()
    journal.asked.clear()
    assert (await get(client, "S-1", token=None))[0] == 401
    assert (await get(client, "S-1", token="wrong"))[0] == 401
    assert journal.asked == []  # nothing is looked up before authentication


async def test_store_failure_is_503_with_retry_after_and_lookups_have_a_rate(
    client: TestClient[web.Request, web.Application],
) -> None:
    status, text, headers = await get(client, "BOOM")
    assert (status, headers["Retry-After"]) == (503, "2")
    assert '"reason": "journal_unavailable"' in text
    assert "locked" not in text  # the store's words stay in the log
    codes = [(await get(client, "S-1"))[0] for _ in range(5)]
    assert codes[-1] == 429  # burst 5, BOOM took one


async def test_journal_off_is_a_404_of_its_own_after_authentication() -> None:
    client = await client_for(None)
    try:
        status, text, _ = await get(client, "S-1")
        assert status == 404
        assert json.loads(text)["reason"] == "journal_disabled"
        assert (await get(client, "S-1", token="wrong"))[0] == 401
    finally:
        await client.close()
