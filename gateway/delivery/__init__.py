"""Delivery: from the destination queue to the backend, through any outage, losing nothing.

Owns: the consumer connection of its own (connection.py); one worker per destination that
keeps its consumer as wanted after every reconnect and circuit change (worker.py); what
becomes of each message: send, retry, hand back, park, ack (deliverer.py); the HTTP POST
and health probe (sender.py); parking with a confirm and its retry (parking.py); the
circuit breaker, slow start and pacing (circuit.py); the retry policy (retry.py); and the
pool with its states (pool.py).

May import: the kernel (errors, messages, supervise, timeutil, pacing), settings,
observability, broker (it publishes hand-backs and parks on the publisher's connection).
Must not import intake, operations, runtime or tools: delivery works the same whoever put
the message in the queue.
"""
