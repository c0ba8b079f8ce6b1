"""Observability: what the gateway tells people about itself.

Owns: every Prometheus metric and the /metrics handler (metrics.py), JSON logs (logs.py),
and the one place errors become RFC 9457 problem+json answers (problems.py).

May import: the kernel and settings only, so every stage can report without a cycle.
"""
