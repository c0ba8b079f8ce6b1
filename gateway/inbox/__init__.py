"""Pull inboxes: destinations with `kind = "inbox"`, whose partner fetches its messages.

Owns the lease (lease.py: taking messages from an inbox's queue under a lease kept by the
broker, acknowledging them through the journal) and the partner's HTTP door (api.py:
`GET /v1/inbox`, `POST /v1/inbox/ack`). The reference client partners run is
gateway/tools/inbox_client.py (`swgw inbox pull`).

May import the kernel, settings, observability, broker, journal and intake (the partner's
authentication and rate limits are intake's, shared with POST /v1/messages).
"""
