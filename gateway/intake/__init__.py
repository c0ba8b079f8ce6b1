"""Intake: from the partner's POST to a message confirmed in RabbitMQ, or a clear refusal.

Owns: the HTTP handler (handler.py), who is sending (identity.py, tls.py), partner rate
limits and the global concurrency bound (limits.py), safe XML parsing and schema validation
(validation.py), business rules (rules), XML signatures (signature.py), routing to a
destination (routing.py), duplicate elimination (dedup/) and the partner's status lookup
(status.py: GET /v1/messages/{id}, from the journal).

May import: the kernel (errors, messages, supervise), settings, observability, broker (to
publish), journal (its store of seen ids, its events, the status lookup). Must not import
delivery, operations, runtime or tools: intake answers partners the same whether or not
anything is being delivered.
"""
