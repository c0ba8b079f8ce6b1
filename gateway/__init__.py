"""swgw: single-window message gateway.

The package follows one message from the partner's POST to the backend, a folder per stage:

    intake/         HTTP handler, identity, limits, XML and schemas, rules, signatures, routing, dedup,
                    the partner's status lookup
    broker/         RabbitMQ topology and the confirmed publisher (the publishing connection)
    delivery/       consumer connection, per-destination workers, circuit, retries, parking
    operations/     what ops do to messages afterwards: replay, the admin API, history, report, reconcile
    inbox/          pull inboxes: leases and acknowledgements, GET /v1/inbox and POST /v1/inbox/ack
    observability/  metrics, logs, problem+json answers
    settings/       the TOML config: model, reader, cross-table checks
    runtime/        create_app, serving, health: the only code that wires the stages together
    tools/          simulator, demo, schema docs, status screen: never on a message's path

Beside them, the kernel every stage may use: errors.py, messages.py (the queued message and
its AMQP form), supervise.py (supervised background tasks), credentials.py (bearer tokens:
hashing and constant-time matching), timeutil.py (ISO-8601 time, Clock/Sleep), pacing.py
(the token bucket), receipts.py (signed receipts: keys, signing, verification; settings
loads the keys, intake signs, the CLI verifies) and progress.py (count, rate and time left of
a long command, on a terminal only). cli.py is the command line.
What may import what is written down in tests/unit/test_layout.py and enforced there.
Nothing is imported from the package root.
"""

__version__ = "0.1.0"
