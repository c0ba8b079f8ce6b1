"""Delivery: from the destination queue to the backend, through any outage, losing nothing.

Owns: the consumer connection (connection.py), one worker per destination that consumes,
retries, trips the circuit and settles each message (worker.py), the HTTP POST and health
probe (sender.py), parking with a confirm (parking.py), and the pool with its states
(pool.py). May import: gateway.broker.publisher (publishing returns and parks), gateway.delivery.circuit,
gateway.delivery.retry, gateway.messages, gateway.observability.metrics, gateway.settings.config, gateway.errors,
gateway.supervise. Must not import intake (HTTP handler, validation, dedup) or operations
(admin, replay): delivery works the same whoever put the message in the queue.
"""

from gateway.delivery.pool import Delivery
from gateway.delivery.worker import DestinationWorker

__all__ = ["Delivery", "DestinationWorker"]
