"""One HTTP POST of a message to its backend, and one health probe: what the answer means.

The sender owns the destination's HTTP connection pool and nothing else: it does not
retry, does not count failures, does not decide about parking. It turns every way a POST
can end into exactly one of three things: an `Answer` (2xx, delivered: status and excerpt,
for the journal), a `TransientDeliveryError` (refused, reset, timed out, 5xx, 408, 429: the
same bytes may succeed later) or a `PermanentDeliveryError` (any other answer: the backend
judged this message). `retry.classify` is the single table of statuses; `error_class` names
how a POST failed without an answer (timeout, refused, reset, connection).

The probe counts a backend as up only when its health URL answers one of the configured
statuses (2xx by default). "Anything below 500" was the old rule, and a GET on a delivery
URL that answers 405, or a load balancer's page, would then half-open the circuit over
and over while every POST failed.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from gateway.delivery.retry import classify, parse_retry_after
from gateway.errors import PermanentDeliveryError, TransientDeliveryError
from gateway.messages import EXCERPT_MAX, QueuedMessage
from gateway.observability.metrics import Metrics
from gateway.settings.model import Destination


@dataclass(frozen=True)
class Answer:
    """The backend's 2xx answer to one POST: its status and the start of its body."""

    status: int
    excerpt: str


def error_class(exc: BaseException) -> str | None:
    """How a POST failed without an answer: timeout, refused, reset or connection; None if it was answered."""
    if getattr(exc, "status", None) is not None:
        return None
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, TimeoutError):
        return "timeout"
    code = getattr(cause, "errno", None)
    if isinstance(cause, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return "refused"
    if isinstance(cause, ConnectionResetError | BrokenPipeError | aiohttp.ServerDisconnectedError) or code in (
        errno.ECONNRESET,
        errno.EPIPE,
    ):
        return "reset"
    return "connection"


class Sender:
    """POSTs to one destination. `start()` before use, `close()` at the end."""

    def __init__(self, dest: Destination, metrics: Metrics) -> None:
        self.dest = dest
        self.metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        # Built once, not per POST (issue 17, drain): the timeout and the metrics' label
        # children are the same for every message of the destination.
        self._timeout = aiohttp.ClientTimeout(total=dest.timeout_s)
        self._attempts = metrics.delivery_attempts.labels(dest.id)
        self._duration = metrics.backend_duration.labels(dest.id)

    async def start(self) -> None:
        limit = self.dest.concurrency * 2 + 2  # + the probe and a trial beside a full window
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        self._http = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def send(self, msg: QueuedMessage, attempt: int) -> Answer:
        """One POST of the original bytes. Returns the 2xx answer; raises Transient/PermanentDeliveryError."""
        assert self._http is not None, "Sender.start() was not called"
        dest = self.dest
        self._attempts.inc()
        started = time.perf_counter()
        try:
            async with self._http.post(
                dest.url,
                data=msg.body,
                headers=msg.http_headers(attempt),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                excerpt = (await resp.content.read(EXCERPT_MAX)).decode("utf-8", "replace")
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError as exc:
            raise TransientDeliveryError(f"no answer within {dest.timeout_s:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientDeliveryError(f"connection failed: {exc}") from exc
        finally:
            self._duration.observe(time.perf_counter() - started)
        kind = classify(status)
        if kind is None:
            return Answer(status, excerpt)
        if kind is TransientDeliveryError:
            raise TransientDeliveryError(
                f"backend answered {status}",
                status=status,
                excerpt=excerpt,
                retry_after_s=parse_retry_after(retry_after, now=datetime.now(UTC)),
            )
        raise PermanentDeliveryError(f"backend rejected the message with {status}", status=status, excerpt=excerpt)

    async def probe(self) -> bool:
        """GET the health URL: True only for a configured healthy status (2xx by default).

        Without a `health_url` there is nothing to ask, so the answer is True: the
        half-open trial (one real message) is then the probe.
        """
        assert self._http is not None, "Sender.start() was not called"
        if self.dest.health_url is None:
            return True
        try:
            async with self._http.get(
                self.dest.health_url,
                timeout=aiohttp.ClientTimeout(total=self.dest.timeout_s),
                allow_redirects=False,
            ) as resp:
                return self.dest.is_healthy_status(resp.status)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
