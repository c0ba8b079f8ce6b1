"""GET /v1/messages/{message_id}: "where is my message?", answered to the partner that sent it.

Same door as POST /v1/messages: the partner's own bearer token and/or client certificate
(identity.py, the same `Authenticator`), then a rate limit, then one journal lookup keyed
by (the authenticated partner, the id). Another partner's message is never even read, so
neither the answer nor its timing can tell whether it exists:

    200  the record (STATUS_FIELDS below); with `?receipt=1` also `receipt`, the signed
         receipt of the 202 rebuilt from the record and signed again (gateway/receipts.py)
    401  no or unknown credentials (as for POST)
    404  message_not_found: no message of *yours* with this id: never sent, sent by another
         partner, or past `[journal] retention_days`. One body for all of them.
    404  journal_disabled: this gateway keeps no journal (`[journal] enabled = false` or
         `[dedup] backend = "none"`). Not a 503: nothing will change by retrying, and a
         partner's client treats 503 as "retry later". Not the message_not_found body either,
         so nobody re-sends a message because the gateway cannot look it up.
    429  the partner's status lookups are over its rate (Retry-After)
    503  journal_unavailable: the store did not answer (Retry-After)

Rate limit: lookups have their own token bucket per partner, with the partner's
`rate_per_s` and `burst` (none for a partner without `rate_per_s`, the default), apart
from its sending bucket: a help desk polling statuses can
never use up the partner's sending rate, and a partner sending at its limit can still ask.
The concurrency gate of POST is not taken: a lookup reads no body and is one indexed query.

`status` is one of model.Status: `received` (taken, the broker's confirm not yet in: no
202 was given yet; a 503'd post may show it until its claim expires), `queued`,
`delivering` (at least one attempt made), `delivered`, `parked` (refused by the backend or
out of attempts; ops decide), `dead_lettered` (moved to parking by the broker's delivery
limit). The parked reason is not shown to partners: it may quote the backend's answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.errors import JournalDisabled, JournalUnavailable, MessageNotFound, StoreError
from gateway.intake.identity import Authenticator
from gateway.intake.limits import PartnerRateLimiter
from gateway.journal.model import JournalReader, MessageRecord
from gateway.observability.metrics import Metrics
from gateway.receipts import KeyRing, ReceiptFacts

log = logging.getLogger("swgw.status")

STATUS_FIELDS = (
    "message_id",
    "status",
    "message_type",
    "receiver",
    "destination",
    "received_at",
    "delivered_at",
    "attempts",
    "updated_at",
)
"""What a partner sees of its message record, in this order."""

NOT_FOUND = (
    "No message with this MessageId from your partner account is known to this gateway "
    "(never accepted, or past the journal's retention)."
)


def status_json(record: MessageRecord) -> dict[str, Any]:
    """The partner's view of `record`: STATUS_FIELDS, `status` as its string."""
    body: dict[str, Any] = {name: getattr(record, name) for name in STATUS_FIELDS}
    body["status"] = record.status.value
    return body


@dataclass
class StatusApi:
    """The handler above; create_app builds it with the intake's authenticator and its own limiter."""

    auth: Authenticator
    limiter: PartnerRateLimiter  # status lookups' own buckets, not the sending ones
    reader: JournalReader | None  # None: the journal is off
    metrics: Metrics
    retry_after_s: int = 2
    receipts: KeyRing | None = None  # `?receipt=1`: the signed receipt again (None: unsigned gateway)

    async def handle(self, request: web.Request) -> web.Response:
        partner = self.auth.partner_of(request, self.metrics)
        self.limiter.check(partner)
        if self.reader is None:
            raise JournalDisabled(
                "This gateway keeps no message journal, so it cannot tell a message's status; "
                "ask its operators (the message was accepted if you hold a 202 receipt)."
            )
        try:
            record = await self.reader.message(partner.id, request.match_info["message_id"])
        except StoreError as exc:
            log.warning("status lookup failed: %s", exc, extra={"event": "status_failed", "partner": partner.id})
            raise JournalUnavailable(
                "The message journal did not answer; retry after the Retry-After delay.",
                retry_after_s=self.retry_after_s,
            ) from exc
        if record is None:
            raise MessageNotFound(NOT_FOUND)
        body = status_json(record)
        if request.query.get("receipt") in ("1", "true"):
            body["receipt"] = self._receipt(record)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _receipt(self, record: MessageRecord) -> str | None:
        """The receipt rebuilt from the record (the facts the 202 signed) and signed with the
        current key: the same payload as the 202's; the same JWS too while that key signs
        (Ed25519 is deterministic). None when this gateway signs no receipts, or for a record
        written before digests were kept."""
        if self.receipts is None or not record.sha256:
            return None
        facts = ReceiptFacts(
            message_id=record.message_id,
            sender=record.sender,
            receiver=record.receiver,
            message_type=record.message_type,
            body_sha256=record.sha256,
            received_at=record.received_at,
        )
        return self.receipts.sign(facts)
