"""Broker: RabbitMQ topology, the publishing connection and confirmed publishing.

Owns: broker names and queue arguments, the idempotent topology declaration, the robust
publishing connection with its confirm channel, and queue-depth polling (publisher.py).
aio-pika's exceptions are translated into BrokerUnavailable here and nowhere else.

May import: the kernel, settings, observability. Must not import intake, delivery,
operations, runtime or tools.
"""
