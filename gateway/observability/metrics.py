"""Every Prometheus metric the gateway exports, created on a registry passed in.

Label sets are bounded by configuration: partner ids, message type names and destination
ids come from the config, and anything a partner typed that is not configured is reported
as "(unknown)"; message ids are never labels. Names follow Prometheus conventions (base
units, `_total` counters, `_seconds` histograms). Under several replicas: counters and
histograms are per replica and meant to be summed; the `swgw_destination_backlog_messages`
and `swgw_destination_parked_messages` gauges are read from the broker, so every replica
reports the same value (use max, not sum); circuit and last-delivery gauges are per replica.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

UNKNOWN = "(unknown)"
MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


class Metrics:
    """All metrics, grouped by the stage that updates them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        # process_* (memory, CPU, open fds, start time: a restart shows as a jump) and
        # python_info. The default registry would have them, but ours is passed in.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # ingest
        self.ingest_messages = Counter(
            "swgw_ingest_messages_total",
            "Messages received, by partner, message type and outcome (accepted, rejected, duplicate, "
            "conflict: a MessageId already used for a different body, answered 409).",
            ["partner", "message_type", "outcome"],
            registry=r,
        )
        self.ingest_rejections = Counter(
            "swgw_ingest_rejections_total",
            "Requests answered with an error, by partner, message type, HTTP status and reason.",
            ["partner", "message_type", "status", "reason"],
            registry=r,
        )
        self.validation_failures = Counter(
            "swgw_validation_failures_total",
            "Messages failing envelope/payload schema or business rules, by message type and reason.",
            ["message_type", "reason"],
            registry=r,
        )
        self.ingest_bytes = Counter(
            "swgw_ingest_bytes_total", "Request body bytes received, by partner.", ["partner"], registry=r
        )
        self.request_duration = Histogram(
            "swgw_http_request_duration_seconds",
            "HTTP request handling time, by route and status code.",
            ["route", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_duration = Histogram(
            "swgw_ingest_duration_seconds",
            "Time from body read to broker confirm, for accepted messages.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_duration = Histogram(
            "swgw_broker_publish_duration_seconds",
            "Time from publish to broker confirm.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_failures = Counter(
            "swgw_broker_publish_failures_total",
            "Publishes that got no confirm, by reason (disconnected, timeout, nacked, unroutable, blocked).",
            ["reason"],
            registry=r,
        )
        # broker connection
        self.broker_connected = Gauge("swgw_broker_connected", "1 while the broker connection is open.", registry=r)
        self.broker_reconnects = Counter(
            "swgw_broker_reconnects_total", "Broker connections re-established after a loss.", registry=r
        )
        self.broker_blocked = Gauge(
            "swgw_broker_blocked", "1 while the broker blocks publishers (memory or disk alarm).", registry=r
        )
        # per destination
        self.backlog = Gauge(
            "swgw_destination_backlog_messages",
            "Messages waiting in the destination's queue (ready, read from the broker).",
            ["destination"],
            registry=r,
        )
        self.parked = Gauge(
            "swgw_destination_parked_messages",
            "Messages in the destination's parking queue.",
            ["destination"],
            registry=r,
        )
        self.deliveries = Counter(
            "swgw_deliveries_total",
            "Delivery outcomes by destination: delivered, parked, returned (handed back to the queue with a "
            "confirm), requeued (nacked back: the hand-back failed, or the worker hit a bug).",
            ["destination", "outcome"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            "swgw_delivery_attempts_total",
            "HTTP delivery attempts made, by destination.",
            ["destination"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "swgw_delivery_retries_total",
            "Attempts that were retries of an earlier failed attempt.",
            ["destination"],
            registry=r,
        )
        self.backend_duration = Histogram(
            "swgw_backend_response_seconds",
            "Backend response time per attempt, by destination.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "swgw_end_to_end_seconds",
            "From receipt (202) to the backend's 2xx, by destination.",
            ["destination"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.circuit_state = Gauge(
            "swgw_circuit_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ["destination"],
            registry=r,
        )
        self.circuit_changed = Gauge(
            "swgw_circuit_state_changed_timestamp_seconds",
            "Unix time of the last circuit state change.",
            ["destination"],
            registry=r,
        )
        self.circuit_opened = Counter(
            "swgw_circuit_opened_total",
            "Times the circuit opened, by destination.",
            ["destination"],
            registry=r,
        )
        self.last_delivery = Gauge(
            "swgw_last_delivery_timestamp_seconds",
            "Unix time of the last successful delivery.",
            ["destination"],
            registry=r,
        )
        self.oldest_age = Gauge(
            "swgw_destination_oldest_message_age_seconds",
            "Age of the oldest undelivered message this replica has seen at the head of the queue.",
            ["destination"],
            registry=r,
        )
        self.paused = Gauge(
            "swgw_destination_paused", "1 while an operator has paused delivery.", ["destination"], registry=r
        )
        self.consuming = Gauge(
            "swgw_destination_consuming",
            "1 while this replica holds a consumer on the destination's queue (0: paused, circuit open, "
            "parking stuck, or the broker connection is down).",
            ["destination"],
            registry=r,
        )
        self.active = Gauge(
            "swgw_destination_active",
            "1 while this replica's consumer is the queue's single active one (it has been sent messages); "
            "summed over the replicas, at most 1 per destination.",
            ["destination"],
            registry=r,
        )
        self.returned = Counter(
            "swgw_delivery_returned_total",
            "Messages handed back to the destination queue unsent or after failing (republished with a confirm, "
            "so no delivery count is spent), by reason (circuit, trial_failed, paused, parking_stuck).",
            ["destination", "reason"],
            registry=r,
        )
        self.park_failures = Counter(
            "swgw_park_failures_total",
            "Attempts to park a message that got no broker confirm; the message is held and parking retried.",
            ["destination"],
            registry=r,
        )
        self.parking_stuck = Gauge(
            "swgw_parking_stuck",
            "1 while a destination holds a message it cannot park and has stopped consuming.",
            ["destination"],
            registry=r,
        )
        # supervision
        self.task_restarts = Counter(
            "swgw_background_task_restarts_total",
            "Background tasks that raised and were restarted with backoff, by task.",
            ["task"],
            registry=r,
        )
        # replay
        self.replayed = Counter(
            "swgw_replayed_messages_total",
            "Parked messages handled by replay, by destination and outcome.",
            ["destination", "outcome"],
            registry=r,
        )
        # security
        self.auth_failures = Counter(
            "swgw_auth_failures_total", "Failed authentications, by reason.", ["reason"], registry=r
        )
        # duplicate elimination
        self.dedup_store_errors = Counter(
            "swgw_dedup_store_errors_total",
            "Failed calls to the store of seen message ids, by operation (claim, confirm, release, purge).",
            ["operation"],
            registry=r,
        )
        for op in ("claim", "confirm", "release", "purge"):
            self.dedup_store_errors.labels(op)
        self.dedup_late_outcomes = Counter(
            "swgw_dedup_late_outcomes_total",
            "Publishes whose confirm timed out (the partner got 503) and whose claim was kept while the broker's "
            "answer was awaited, by how that ended: queued (late ack, recorded), released (late nack, return or "
            "lost connection), expired (no answer within late_confirm_wait_s), cancelled (gateway stopping), "
            "error (store failure or unexpected answer; logged). The last three leave the claim until it is stale.",
            ["outcome"],
            registry=r,
        )
        for outcome in ("queued", "released", "expired", "cancelled", "error"):
            self.dedup_late_outcomes.labels(outcome)
        # the message journal (gateway/journal/writer.py): unlabelled, so every series exists from the start
        self.journal_write_seconds = Histogram(
            "swgw_journal_write_seconds",
            "Time to commit one batch of journal events (one transaction).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.journal_batch_events = Histogram(
            "swgw_journal_batch_events",
            "Journal events per commit: everything queued since the previous commit goes in one transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.journal_backlog = Gauge(
            "swgw_journal_backlog_events",
            "Journal events queued or being committed, not yet written. Deliveries wait for theirs before acking.",
            registry=r,
        )
        self.journal_write_errors = Counter(
            "swgw_journal_write_errors_total",
            "Journal commits that failed (retried with backoff, events kept in order), and events that "
            "arrived after the journal closed.",
            registry=r,
        )

        # pull inboxes (gateway/inbox/): depth gauges are read from the broker (max across replicas)
        self.inbox_messages = Gauge(
            "swgw_inbox_messages",
            "Messages in a pull inbox: waiting (not leased) and leased (pulled, lease running; an acknowledged "
            "message stays counted until its lease ends).",
            ["inbox", "state"],
            registry=r,
        )
        self.inbox_oldest_seen = Gauge(
            "swgw_inbox_oldest_message_received_timestamp_seconds",
            "received_at of the oldest message the last poll of this inbox handed out (its head), 0 once the "
            "inbox is empty; time() minus it is the oldest message's age.",
            ["inbox"],
            registry=r,
        )
        self.inbox_last_poll = Gauge(
            "swgw_inbox_last_poll_timestamp_seconds",
            "When the partner last polled its inbox on this replica (the replica's start time before any poll).",
            ["inbox"],
            registry=r,
        )
        self.inbox_unpolled_alert = Gauge(
            "swgw_inbox_unpolled_alert_seconds",
            "The inbox's unpolled_alert_s: SwgwInboxNotPolled fires when it holds messages and nobody polled "
            "for this long.",
            ["inbox"],
            registry=r,
        )
        self.inbox_leased = Counter(
            "swgw_inbox_leased_total", "Messages handed to the partner under a lease.", ["inbox"], registry=r
        )
        self.inbox_acked = Counter(
            "swgw_inbox_acknowledged_total", "Leased messages the partner acknowledged.", ["inbox"], registry=r
        )
        self.inbox_leases_expired = Counter(
            "swgw_inbox_leases_expired_total",
            "Leases that ended without an acknowledgement, counted when the message is offered again.",
            ["inbox"],
            registry=r,
        )

    def child(self, metric: MetricT, *values: str) -> MetricT:
        """`metric.labels(*values)`, looked up once and kept: `.labels()` validates and locks on
        every call, a measurable share of a request (issue 17). The label sets are the metrics'
        own (partners, types, routes, outcomes), so the cache grows no further than they do."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(MetricT, found)


async def metrics_handler(_: web.Request, metrics: Metrics) -> web.Response:
    resp = web.Response(body=generate_latest(metrics.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def request_timing_middleware(metrics: Metrics) -> Middleware:
    """Times every request into `swgw_http_request_duration_seconds{route, code}`.

    Put it first (outermost) in the middleware list, so `code` is the status the client got,
    after problem_middleware has turned errors into answers. `route` is the matched route's
    pattern (`/admin/destinations/{id}/pause`), never the raw path, so a scanner probing random
    URLs cannot grow the label set: anything unmatched is "(unmatched)".
    """

    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        code = 500  # an exception escaped every other layer
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            info = request.match_info
            resource = info.route.resource if info.http_exception is None else None
            route = resource.canonical if resource is not None else "(unmatched)"
            metrics.child(metrics.request_duration, route, str(code)).observe(time.perf_counter() - started)

    return timing
