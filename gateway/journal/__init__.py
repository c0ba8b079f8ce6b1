"""Journal: what happened to every message, for partners ("where is my message?"), ops
(history, the outage report, reconciliation with a backend) and auditors.

Owns: the vocabulary (model.py: statuses, events, records, filters), the store of message
records and their events, which is also intake's store of seen ids (one row per message:
the dedup claim *is* the message record), the batched writer that commits events per
event-loop tick, retention, and the queries behind the status API, the admin history, the
report and reconciliation.

May import: the kernel, settings, observability. Intake, delivery and operations write to
it; runtime wires it; tools and cli read it. The broker stays the source of truth for what
is queued; the journal is the source of truth for what happened.
"""
