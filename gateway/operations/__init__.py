"""Operations: what ops do with messages after the fact.

Owns: listing and replaying parked messages (replay.py), the admin HTTP API (admin.py:
destination states, pause and resume, parked, replay, message history and search) and who
may use it (access.py), and the journal's read side for ops: history and search
(messages.py, also `swgw messages`), the outage report (report.py) and reconciliation with
a backend's ids (reconcile.py).

May import: the kernel, settings, observability, broker, journal (to read it, and to journal
replays), delivery (to pause workers). Must
not import intake, runtime or tools.
"""
