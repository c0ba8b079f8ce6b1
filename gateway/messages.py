"""The queued message, and the one place it becomes AMQP properties/headers and back.

Delivery and replay never re-parse XML: everything they need travels as headers next to
the partner's bytes, which stay byte-identical from POST to backend (and through parking).
Parking adds headers; it never touches the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aiormq import spec

from gateway.timeutil import iso

_H = "x-swgw-"
EXCERPT_MAX = 200


@dataclass(frozen=True)
class Parking:
    """Why a message was parked: reason token, backend status and answer excerpt, attempts, when."""

    reason: str
    status: int | None
    excerpt: str
    attempts: int
    parked_at: str


@dataclass(frozen=True)
class QueuedMessage:
    message_id: str
    correlation_id: str | None
    message_type: str
    # The envelope's From. Intake refuses (403) a From that is not the authenticated partner,
    # so this is also the partner who sent it; there is no separate partner field.
    sender: str
    receiver: str
    destination: str
    received_at: str
    body: bytes
    test: bool = False
    parking: Parking | None = None
    # POSTs that failed while the backend was judged up, carried across redeliveries (the
    # worker republishes a message it hands back, with this count, instead of requeueing).
    attempts: int = 0

    def _headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            _H + "message-id": self.message_id,
            _H + "type": self.message_type,
            _H + "from": self.sender,
            _H + "to": self.receiver,
            _H + "destination": self.destination,
            _H + "received-at": self.received_at,
            _H + "test": self.test,
        }
        if self.correlation_id:
            headers[_H + "correlation-id"] = self.correlation_id
        if self.attempts:
            headers[_H + "attempts"] = self.attempts
        if self.parking is not None:
            p = self.parking
            headers.update(
                {
                    _H + "parked-reason": p.reason,
                    _H + "parked-status": p.status if p.status is not None else -1,
                    _H + "parked-excerpt": p.excerpt[:EXCERPT_MAX],
                    _H + "parked-attempts": p.attempts,
                    _H + "parked-at": p.parked_at,
                }
            )
        return headers

    def to_amqp(self) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            headers=self._headers(),
            content_type="application/xml",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            type=self.message_type,
            app_id="swgw",
        )

    def amqp_properties(self) -> spec.Basic.Properties:
        """What `to_amqp().properties` is, built without an aio_pika.Message: for replay's publish
        straight on the channel (tests/unit/operations/test_republish.py compares the bytes)."""
        return spec.Basic.Properties(
            app_id="swgw",
            content_type="application/xml",
            correlation_id=self.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=self._headers(),
            message_id=self.message_id,
            message_type=self.message_type,
            priority=0,
        )

    def parked(self, parking: Parking) -> QueuedMessage:
        return replace(self, parking=parking)

    def unparked(self) -> QueuedMessage:
        """For replay: a fresh start, its attempt count too (ops fixed whatever failed)."""
        return replace(self, parking=None, attempts=0)

    def with_attempts(self, attempts: int) -> QueuedMessage:
        return replace(self, attempts=attempts)

    def http_headers(self, attempt: int) -> dict[str, str]:
        """What the backend receives next to the bytes, so it can deduplicate by message id."""
        headers = {
            "Content-Type": "application/xml",
            "X-Message-Id": self.message_id,
            "X-Message-Type": self.message_type,
            "X-Message-From": self.sender,
            "X-Message-To": self.receiver,
            "X-Received-At": self.received_at,
            "X-Delivery-Attempt": str(attempt),
        }
        if self.correlation_id:
            headers["X-Correlation-Id"] = self.correlation_id
        return headers

    @classmethod
    def from_amqp(cls, message: AbstractIncomingMessage) -> QueuedMessage:
        return cls.from_parts(message.body, message.headers or {})

    @classmethod
    def from_parts(cls, body: bytes, headers: Mapping[str, Any]) -> QueuedMessage:
        # Hot: once per delivered message (issue 17, drain). The keys are built once and a
        # header that is already a str (pamqp decodes UTF-8 strings to str) is taken as is.
        get = headers.get
        parking = None
        if _PARKED_REASON in headers:
            status = get(_H + "parked-status", -1)
            parking = Parking(
                reason=_text(get(_PARKED_REASON)),
                status=int(status) if isinstance(status, int) and status >= 0 else None,
                excerpt=_text(get(_H + "parked-excerpt")),
                attempts=int(get(_H + "parked-attempts", 0) or 0),
                parked_at=_text(get(_H + "parked-at")),
            )
        elif get("x-death"):
            # Dead-lettered by the broker (delivery limit reached): make it look parked.
            deaths = headers["x-death"]
            death: Mapping[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
            when = death.get("time")
            parking = Parking(
                reason=f"dead-lettered:{death.get('reason', 'unknown')}",
                status=None,
                excerpt="",
                attempts=int(get("x-delivery-count", 0) or 0),
                parked_at=iso(when) if isinstance(when, datetime) else "",
            )
        return cls(
            message_id=_text(get(_MESSAGE_ID)),
            correlation_id=_text(get(_CORRELATION_ID)) or None,
            message_type=_text(get(_TYPE)),
            sender=_text(get(_FROM)),
            receiver=_text(get(_TO)),
            destination=_text(get(_DESTINATION)),
            received_at=_text(get(_RECEIVED_AT)),
            body=body,
            test=bool(get(_TEST, False)),
            parking=parking,
            attempts=_count(get(_ATTEMPTS, 0)),
        )


_MESSAGE_ID, _CORRELATION_ID, _TYPE = _H + "message-id", _H + "correlation-id", _H + "type"
_FROM, _TO, _DESTINATION = _H + "from", _H + "to", _H + "destination"
_RECEIVED_AT, _TEST, _ATTEMPTS, _PARKED_REASON = _H + "received-at", _H + "test", _H + "attempts", _H + "parked-reason"


def _text(value: Any) -> str:
    """A header as text: a str as is, bytes decoded (invalid UTF-8 replaced), absent or None as ""."""
    if type(value) is str:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


def _count(value: Any) -> int:
    """A non-negative count from a header; anything else (a foreign or garbled header) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
