"""Duplicate elimination at intake: a re-sent (sender, MessageId) gets its original receipt.

Owns: the policy around one publish (policy.py) and waiting for late confirms (late.py).
The store of seen ids is the journal's (gateway/journal/store.py: the protocol and its
values; sqlite.py, postgres.py): the dedup claim *is* the message record. Part of intake;
same import rule (intake may import the journal).
"""
