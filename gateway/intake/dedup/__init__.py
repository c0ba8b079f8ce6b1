"""Duplicate elimination at intake: a re-sent (sender, MessageId) gets its original receipt.

Owns: the policy around one publish (policy.py), waiting for late confirms (late.py), the
store protocol and its value types (store.py) and the two stores of seen ids (sqlite.py,
postgres.py), which import store.py only. Part of intake; same import rule.
"""
