"""Every error the gateway raises on purpose, in one tree.

```
GatewayError
├── ConfigError                      bad TOML: names the key and the file
├── IngressError                     answered to a partner as application/problem+json
│   ├── MalformedXML          400    not well-formed, DOCTYPE/entities, not an envelope
│   ├── InvalidQuery          400    a bad query parameter (journal queries): names the parameter
│   ├── Unauthenticated       401    missing / unknown bearer token
│   ├── Forbidden             403    From is not the partner, type or receiver not allowed
│   ├── MessageNotFound       404    status API: no such message of yours (never says whose it is)
│   ├── JournalDisabled       404    status API / journal queries on a gateway whose journal is off
│   ├── RequestTimeout        408    body not received within server.request_timeout_s (slowloris)
│   ├── ReplayInProgress      409    admin/CLI: another replay of the destination runs (CLI exit 3)
│   ├── MessageIdReused       409    the (sender, MessageId) was queued before with another body
│   ├── PayloadTooLarge       413
│   ├── UnsupportedMediaType  415
│   ├── InvalidMessage        422    schema / rule problems (carries the problems list)
│   ├── RateLimited           429    carries Retry-After
│   ├── BrokerUnavailable     503    no confirm: down, blocked, unroutable or timed out; Retry-After
│   │   └── ConfirmTimeout    503    no confirm within broker.confirm_timeout_s (may still be queued)
│   ├── Overloaded            503    server.max_concurrency requests in flight: shed, Retry-After
│   ├── DuplicateInFlight     503    another request holds the claim on this MessageId; Retry-After
│   ├── DedupUnavailable      503    the store of seen MessageIds failed (on_store_error = "reject")
│   └── JournalUnavailable    503    the journal store failed to answer a query; Retry-After
├── StoreError                       a dedup store failed; dedup answers per on_store_error (503 or publish unchecked)
├── ReceiptError                     a receipt key cannot be used, or a receipt does not verify (receipts.py)
└── DeliveryError                    outcome of one delivery attempt to a backend
    ├── TransientDeliveryError       retry later (refused, reset, timeout, 5xx, 408, 429)
    └── PermanentDeliveryError       park now (other 4xx)
```

Each ingress error knows its HTTP status and its RFC 9457 problem type, so the single
translation point (`problems.py`) needs no per-class code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (line, column, readable path) and why.

    `line`/`column` are 1-based and refer to the bytes the partner sent; they are None
    only when the problem has no position (for example a missing element in an empty body).
    """

    line: int | None
    column: int | None
    path: str
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "path": self.path, "reason": self.reason}

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "line ?"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.path}: {self.reason}"


class GatewayError(Exception):
    """Root of every error the gateway raises deliberately."""


class ConfigError(GatewayError):
    """The configuration cannot be used. The message names the file and the key."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        super().__init__(f"{file}: {key}: {message}")


class IngressError(GatewayError):
    """An answer to a partner's request that is not a 202.

    `reason` is a short, bounded token used as a metric label and as the last segment of
    the problem type URI; `detail` is the sentence a person can act on.
    """

    status: int = 500
    title: str = "Internal error"
    reason: str = "internal"

    def __init__(
        self,
        detail: str,
        *,
        reason: str | None = None,
        problems: Sequence[Problem] = (),
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason
        self.problems = tuple(problems)
        self.retry_after_s = retry_after_s

    @property
    def problem_type(self) -> str:
        return f"urn:swgw:problem:{self.reason}"


class MalformedXML(IngressError):
    status = 400
    title = "Malformed XML"
    reason = "malformed_xml"


class InvalidQuery(IngressError):
    """A query parameter of a journal query is wrong; `parameter` names it (also in `errors[].path`)."""

    status = 400
    title = "Invalid query parameter"
    reason = "bad_parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(
            f"{parameter}: {detail}", problems=[Problem(line=None, column=None, path=parameter, reason=detail)]
        )
        self.parameter = parameter


class Unauthenticated(IngressError):
    status = 401
    title = "Unauthenticated"
    reason = "unauthenticated"


class Forbidden(IngressError):
    status = 403
    title = "Forbidden"
    reason = "forbidden"


class MessageNotFound(IngressError):
    """No message of the asking partner has this id (never sent, past retention, or another
    partner's): one answer for all of them, so existence is never revealed."""

    status = 404
    title = "Message not found"
    reason = "message_not_found"


class JournalDisabled(IngressError):
    """The journal is off on this gateway (`[journal] enabled = false` or `[dedup] backend = "none"`)."""

    status = 404
    title = "Message journal disabled"
    reason = "journal_disabled"


class RequestTimeout(IngressError):
    status = 408
    title = "Request timeout"
    reason = "request_timeout"


class PayloadTooLarge(IngressError):
    status = 413
    title = "Payload too large"
    reason = "too_large"


class UnsupportedMediaType(IngressError):
    status = 415
    title = "Unsupported media type"
    reason = "unsupported_media_type"


class InvalidMessage(IngressError):
    status = 422
    title = "Invalid message"
    reason = "schema_invalid"


class ReplayInProgress(IngressError):
    """Another replay of `destination` holds its broker lock (`lock`); this one read nothing."""

    status = 409
    title = "Replay in progress"
    reason = "replay_in_progress"

    def __init__(self, destination: str, lock: str) -> None:
        super().__init__(
            f"A replay of destination {destination!r} is already running (it owns the broker queue {lock!r}); "
            "this one was refused and changed nothing. Run it again once that one has finished "
            "(every replay ends within its time limit)."
        )
        self.destination = destination
        self.lock = lock


class RateLimited(IngressError):
    status = 429
    title = "Too many requests"
    reason = "rate_limited"


class BrokerUnavailable(IngressError):
    status = 503
    title = "Broker unavailable"
    reason = "broker_unavailable"


class ConfirmTimeout(BrokerUnavailable):
    """The broker did not confirm within `broker.confirm_timeout_s`: the message may or may not be queued.

    `outcome`, when not None, is the publish still waiting for the broker's late answer: it
    ends with None on a late ack and raises BrokerUnavailable on a late nack, return or lost
    connection. Whoever catches this error owns `outcome` and must await it (bounded) or
    cancel it; gateway/intake/dedup/policy.py settles the MessageId's claim with it.
    """

    reason = "broker_timeout"

    def __init__(
        self, detail: str, *, retry_after_s: int | None = None, outcome: asyncio.Task[None] | None = None
    ) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.outcome = outcome


class Overloaded(IngressError):
    """Too many requests in flight on this replica; shed before reading the body."""

    status = 503
    title = "Overloaded"
    reason = "overloaded"


class DuplicateInFlight(IngressError):
    """Another request holds the claim for this id and has not finished publishing it."""

    status = 503
    title = "Duplicate in flight"
    reason = "duplicate_in_flight"


class MessageIdReused(IngressError):
    """The id was already accepted from this sender with a different body; nothing was queued."""

    status = 409
    title = "MessageId already used"
    reason = "message_id_reused"


class DedupUnavailable(IngressError):
    """The store of seen ids cannot be reached; nothing was queued."""

    status = 503
    title = "Duplicate check unavailable"
    reason = "dedup_unavailable"


class JournalUnavailable(IngressError):
    """The journal store failed to answer a query (database down, locked, timed out)."""

    status = 503
    title = "Message journal unavailable"
    reason = "journal_unavailable"


class StoreError(GatewayError):
    """A dedup store operation failed (database down, locked, timed out); the cause is chained."""


class ReceiptError(GatewayError):
    """A signing key file cannot be used, or a signed receipt does not verify; the message says why."""


class DeliveryError(GatewayError):
    """One delivery attempt failed. `status` is the backend's HTTP status, if it answered."""

    def __init__(self, message: str, *, status: int | None = None, excerpt: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.excerpt = excerpt


class TransientDeliveryError(DeliveryError):
    """Worth retrying: the backend was unreachable, slow, overloaded or said 'later'."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        excerpt: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, excerpt=excerpt)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(DeliveryError):
    """The backend refused this message for good (a 4xx other than 408/429): park it."""
