"""POST /v1/messages: the partner-facing door.

Order matters and is cheapest-first: a concurrency slot (503), content type (415), token
and/or client certificate (401), the partner's rate limit (429), declared size (413), read
the body with a hard cap and a deadline (413 / 408 while streaming), parse + envelope
(400/422), sender and authorisation (403), message signature (403), payload schema + rules
(422), route (422), then a confirmed publish. Nothing of the body is read before the
partner is known and within its rate.
The 202 receipt is written only after the broker's confirm; any publish failure becomes a
503 with Retry-After (see broker.py), so a partner never holds a receipt for a message the
broker does not have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.broker.publisher import Broker
from gateway.errors import (
    Forbidden,
    IngressError,
    MessageIdReused,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from gateway.intake.dedup.policy import Deduplicator
from gateway.intake.identity import Authenticator
from gateway.intake.limits import ConcurrencyGate, PartnerRateLimiter
from gateway.intake.routing import Router
from gateway.intake.signature import SignatureVerifier
from gateway.intake.tls import peer_certificate
from gateway.intake.validation import Envelope, Validator
from gateway.messages import QueuedMessage
from gateway.observability.metrics import UNKNOWN, Metrics
from gateway.receipts import HEADER as RECEIPT_HEADER
from gateway.receipts import KeyRing, ReceiptFacts, body_sha256
from gateway.settings.model import Partner, Settings
from gateway.timeutil import iso, now_utc

log = logging.getLogger("swgw.ingress")
XML_TYPES = frozenset({"application/xml", "text/xml"})
_CHUNK = 64 * 1024


@dataclass
class Ingress:
    """The door's steps, each built and passed in by create_app (gateway/runtime/app.py)."""

    settings: Settings
    validator: Validator
    router: Router
    broker: Broker
    metrics: Metrics
    auth: Authenticator
    dedup: Deduplicator  # publish once per (sender, MessageId): gateway/intake/dedup/
    limiter: PartnerRateLimiter
    gate: ConcurrencyGate
    signatures: SignatureVerifier
    receipts: KeyRing | None = None  # None: no [receipts], the 202 is unsigned

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        labels = [UNKNOWN, UNKNOWN]  # partner, message type: known only as we go
        try:
            with self.gate.slot():  # 503 before anything is read when max_concurrency are in flight
                response = await self._accept(request, labels)
        except IngressError as exc:
            self.metrics.ingest_rejections.labels(labels[0], labels[1], str(exc.status), exc.reason).inc()
            # A reused MessageId is counted apart: the partner's sender has a bug, not a bad document.
            outcome = "conflict" if isinstance(exc, MessageIdReused) else "rejected"
            self.metrics.ingest_messages.labels(labels[0], labels[1], outcome).inc()
            if exc.status == 401:
                self.metrics.auth_failures.labels(exc.reason).inc()
            if exc.status == 422 or exc.reason in ("malformed_xml", "doctype_forbidden", "not_envelope"):
                self.metrics.validation_failures.labels(labels[1], exc.reason).inc()
            log.info(
                "rejected: %s",
                exc.detail,
                extra={
                    "event": "rejected",
                    "partner": labels[0],
                    "message_type": labels[1],
                    "status": exc.status,
                    "reason": exc.reason,
                },
            )
            raise
        self.metrics.ingest_duration.observe(time.perf_counter() - started)
        return response

    async def _accept(self, request: web.Request, labels: list[str]) -> web.Response:
        try:
            content_type = request.content_type
        except (IndexError, ValueError):  # aiohttp's parser fails on a malformed header (e.g. ";+*"): not XML
            content_type = request.headers.get("Content-Type", "")
        if content_type not in XML_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type {content_type or '(none)'!r} is not accepted; send application/xml (or text/xml)."
            )
        partner = self.auth.partner_for(request.headers.get("Authorization"), peer_certificate(request))
        labels[0] = partner.id
        self.limiter.check(partner)  # 429 before the body is read
        body = await self._read_body(request)
        self.metrics.child(self.metrics.ingest_bytes, partner.id).inc(len(body))
        env = self.validator.read_envelope(body)
        if env.message_type in self.validator.types:
            labels[1] = env.message_type
        self._authorise(partner, env)
        self.signatures.verify(partner, env.payload.getroottree().getroot())  # 403 before schema work
        self.validator.check_payload(env)
        destination = self.router.route(env.receiver, env.message_type)
        message = QueuedMessage(
            message_id=env.message_id,
            correlation_id=env.correlation_id,
            message_type=env.message_type,
            sender=env.sender,
            receiver=env.receiver,
            destination=destination,
            received_at=iso(now_utc()),
            body=body,
            test=env.test,
        )
        # Publish unless (sender, MessageId) was queued already (gateway/intake/dedup/policy.py).
        receipt = await self.dedup.publish_once(message, self.broker.publish)
        if receipt.duplicate:
            self.metrics.ingest_messages.labels(partner.id, env.message_type, "duplicate").inc()
            log.info(
                "duplicate",
                extra={
                    "event": "duplicate",
                    "message_id": message.message_id,
                    "partner": partner.id,
                    "message_type": message.message_type,
                    "destination": receipt.destination,
                    "received_at": receipt.received_at,
                },
            )
            # Same facts as the first 202 (the original received_at; a 409 had any other
            # body), so the same payload: re-signed, never stored (gateway/receipts.py).
            return self._answer(receipt.as_json(), message, receipt.received_at, status=200)
        self.metrics.child(self.metrics.ingest_messages, partner.id, env.message_type, "accepted").inc()
        # Each accepted message is counted (swgw_ingest_messages_total) and journaled (its record and
        # `queued` event); a line per message at INFO cost ~4% of intake (issue 17), so it is DEBUG.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "queued",
                extra={
                    "event": "queued",
                    "message_id": message.message_id,
                    "partner": partner.id,
                    "message_type": message.message_type,
                    "destination": destination,
                },
            )
        return self._answer(
            {
                "message_id": message.message_id,
                "status": "queued",
                "destination": destination,
                "received_at": message.received_at,
            },
            message,
            message.received_at,
            status=202,
        )

    def _answer(
        self, body: dict[str, object], message: QueuedMessage, received_at: str, *, status: int
    ) -> web.Response:
        """The receipt JSON, with the signed receipt in `receipt` and the Swgw-Receipt header when keys are set."""
        if self.receipts is None:
            return web.json_response(body, status=status)
        facts = ReceiptFacts(
            message_id=message.message_id,
            sender=message.sender,
            receiver=message.receiver,
            message_type=message.message_type,
            body_sha256=body_sha256(message.body),
            received_at=received_at,
        )
        signed = self.receipts.sign(facts)
        return web.json_response({**body, "receipt": signed}, status=status, headers={RECEIPT_HEADER: signed})

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(
                f"The body is {request.content_length} bytes; this gateway accepts at most {limit} bytes."
            )
        chunks: list[bytes] = []
        size = 0
        timeout_s = self.settings.server.request_timeout_s
        try:  # a body trickled in slowly (slowloris) must not hold a slot for ever
            async with asyncio.timeout(timeout_s):
                async for chunk in request.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"The body exceeds the limit of {limit} bytes; sending was stopped.")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(
                f"The body was not received within {timeout_s:g} s ({size} bytes arrived); send it in one go.",
            ) from None
        return b"".join(chunks)

    @staticmethod
    def _authorise(partner: Partner, env: Envelope) -> None:
        if env.sender != partner.id:
            raise Forbidden(
                f"The envelope's From is {env.sender!r} but your token belongs to {partner.id!r}; "
                "a partner may only send as itself.",
                reason="sender_mismatch",
            )
        if not partner.may_send(env.message_type):
            raise Forbidden(
                f"Partner {partner.id!r} may not send message type {env.message_type!r}.",
                reason="type_not_allowed",
            )
        if not partner.may_address(env.receiver):
            raise Forbidden(
                f"Partner {partner.id!r} may not send to receiver {env.receiver!r}.",
                reason="receiver_not_allowed",
            )
