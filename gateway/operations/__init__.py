"""Operations: what ops do with messages after the fact.

Owns: listing and replaying parked messages (replay.py), the admin HTTP API (admin.py:
destination states, pause and resume, parked, replay) and who may use it (access.py).

May import: the kernel, settings, observability, broker, delivery (to pause workers). Must
not import intake, runtime or tools.
"""
