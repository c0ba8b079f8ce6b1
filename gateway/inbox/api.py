"""The partner's door to its inbox: `GET /v1/inbox` and `POST /v1/inbox/ack`.

Same credentials as POST /v1/messages (intake/identity.py): the authenticated partner is
the only one whose inbox is read or acknowledged, so no request names an inbox and no
partner can reach another's. Answers:

    GET /v1/inbox?limit=N&wait_s=S
        200  {"messages": [{"message_id", "message_type", "sender", "received_at", "body"}, ...]}
             up to N (1-100, default 10) messages, each leased for the inbox's lease_s; when
             none is waiting, waits up to S seconds (0-30, default 0) for the first arrival.
             `body` is the envelope's XML as the sender posted it, as a string.
    POST /v1/inbox/ack   {"message_ids": ["...", ...]}   (at most 1000)
        200  {"acknowledged": [...], "unknown": [...]}: acknowledged ids (now or before: acking
             twice is not an error) and ids no leased message of this inbox has.
    400  invalid_query: a bad limit, wait_s or ack body, naming it
    401  no or unknown credentials
    404  no_inbox: the partner has no inbox on this gateway
    429  the partner's inbox requests are over its rate (own bucket, apart from sending)
    503  broker_unavailable / journal_unavailable, with Retry-After
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aio_pika.exceptions import AMQPError
from aiohttp import web

from gateway.broker.publisher import Broker
from gateway.errors import (
    BrokerUnavailable,
    IngressError,
    InvalidQuery,
    JournalUnavailable,
    StoreError,
)
from gateway.inbox.lease import MAX_ACK_IDS, MAX_LIMIT, MAX_WAIT_S, Inbox
from gateway.intake.identity import Authenticator
from gateway.intake.limits import PartnerRateLimiter
from gateway.journal.model import JournalReader, JournalWriter
from gateway.observability.metrics import Metrics
from gateway.settings.model import Partner, Settings

log = logging.getLogger("swgw.inbox")


class NoInbox(IngressError):
    """The authenticated partner has no inbox (`[[destinations]] kind = "inbox"`) on this gateway."""

    status = 404
    title = "No inbox"
    reason = "no_inbox"


class Inboxes:
    """Every inbox of the gateway, by the partner that owns it, and the depth poller's pass."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        writer: JournalWriter,
        reader: JournalReader | None,
        metrics: Metrics,
    ) -> None:
        self.broker = broker
        self.metrics = metrics
        self.by_partner: dict[str, Inbox] = {}
        started = time.time()
        for dest in settings.destinations:
            if not dest.is_inbox or reader is None:  # checks.inboxes refuses an inbox without the journal
                continue
            self.by_partner[str(dest.partner)] = Inbox(dest, broker, writer, reader, settings.partners, metrics)
            metrics.inbox_last_poll.labels(dest.id).set(started)
            metrics.inbox_unpolled_alert.labels(dest.id).set(dest.unpolled_alert_s)
            metrics.inbox_leases_expired.labels(dest.id)

    async def poll_depths(self, interval_s: float) -> None:
        """Keep the inbox depth gauges fresh: two passive declares per inbox per interval."""
        while True:
            if self.by_partner and self.broker.ready and self.broker.connection is not None:
                try:
                    channel = await self.broker.connection.channel()
                    try:
                        for inbox in self.by_partner.values():
                            await inbox.depths(channel)
                    finally:
                        with contextlib.suppress(Exception):
                            await channel.close()
                except Exception as exc:  # a failed poll only leaves the gauges one interval older
                    log.debug("inbox depth poll failed: %s", exc)
            await asyncio.sleep(interval_s)


class InboxApi:
    """The two handlers; create_app builds it with intake's authenticator and its own limiter."""

    def __init__(
        self, inboxes: Inboxes, auth: Authenticator, limiter: PartnerRateLimiter, metrics: Metrics, retry_after_s: int
    ) -> None:
        self.inboxes = inboxes
        self.auth = auth
        self.limiter = limiter
        self.metrics = metrics
        self.retry_after_s = retry_after_s

    def _inbox(self, request: web.Request) -> tuple[Partner, Inbox]:
        partner = self.auth.partner_of(request, self.metrics)
        self.limiter.check(partner)
        inbox = self.inboxes.by_partner.get(partner.id)
        if inbox is None:
            raise NoInbox(
                f"Partner {partner.id!r} has no inbox on this gateway: messages for you are delivered to your "
                "endpoint. Ask the operators for an inbox if you want to pull them."
            )
        return partner, inbox

    async def pull(self, request: web.Request) -> web.Response:
        _, inbox = self._inbox(request)
        limit = _number(request.query, "limit", int, 10, 1, MAX_LIMIT)
        wait_s = _number(request.query, "wait_s", float, 0.0, 0.0, MAX_WAIT_S)
        try:
            messages = await inbox.lease(limit, wait_s)
        except (AMQPError, ConnectionError, TimeoutError) as exc:  # the broker went away mid-lease
            log.warning("inbox lease failed: %s", exc, extra={"event": "inbox_failed", "inbox": inbox.dest.id})
            raise BrokerUnavailable(
                "The message broker did not answer; nothing was lost: poll again after the Retry-After delay.",
                retry_after_s=self.retry_after_s,
            ) from exc
        except StoreError as exc:
            log.warning("inbox lease failed: %s", exc, extra={"event": "inbox_failed", "inbox": inbox.dest.id})
            raise JournalUnavailable(
                "The message journal did not answer; retry after the Retry-After delay.",
                retry_after_s=self.retry_after_s,
            ) from exc
        body = {
            "messages": [
                {
                    "message_id": m.message_id,
                    "message_type": m.message_type,
                    "sender": m.sender,
                    "received_at": m.received_at,
                    "body": m.body.decode("utf-8", "replace"),
                }
                for m in messages
            ]
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def ack(self, request: web.Request) -> web.Response:
        _, inbox = self._inbox(request)
        ids = _message_ids(await request.read())
        try:
            result = await inbox.ack(ids)
        except StoreError as exc:
            log.warning("inbox ack failed: %s", exc, extra={"event": "inbox_failed", "inbox": inbox.dest.id})
            raise JournalUnavailable(
                "The message journal did not answer; nothing was lost: acknowledge again after the Retry-After delay.",
                retry_after_s=self.retry_after_s,
            ) from exc
        return web.json_response({"acknowledged": result.acknowledged, "unknown": result.unknown})


def _number(
    query: Mapping[str, str], name: str, kind: type[float] | type[int], default: Any, low: float, high: float
) -> Any:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidQuery(name, f"expected {kind.__name__}, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidQuery(name, f"must be between {low:g} and {high:g}, got {raw}")
    return value


def _message_ids(raw: bytes) -> Sequence[str]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidQuery("body", 'expected JSON {"message_ids": ["...", ...]}') from None
    ids = doc.get("message_ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise InvalidQuery("message_ids", "expected a list of message ids (non-empty strings)")
    if len(ids) > MAX_ACK_IDS:
        raise InvalidQuery("message_ids", f"at most {MAX_ACK_IDS} ids per request, got {len(ids)}")
    return ids
