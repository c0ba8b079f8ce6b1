"""Publishing a selected parked message back to its destination, for replay.py, and what a failed
publish, ack or read means in words.

Why straight on the channel: a replay of 100,000 parked messages spent most of its time per
message inside aio-pika (issue 17): a QueuedMessage turned into an aio_pika.Message whose
properties aio-pika then rebuilds for aiormq. `publish()` sends the parked body as it is,
with `QueuedMessage.amqp_properties()` of the unparked message: the same bytes as
`msg.unparked().to_amqp()` (tests/unit/operations/test_republish.py compares them), on
the same confirmed channel, opened with `on_return_raises`, `mandatory` as before.
"""

from __future__ import annotations

import aiormq.abc
import aiormq.exceptions

from gateway.errors import BrokerUnavailable, StoreError
from gateway.messages import QueuedMessage
from gateway.settings.model import Settings


async def publish(
    channel: aiormq.abc.AbstractChannel, exchange: str, destination: str, msg: QueuedMessage, *, bound_s: float
) -> None:
    """Publish `msg` unparked (no parking headers, no x-death, attempts 0) to `exchange` with
    routing key `destination`; returns once the broker confirmed it.

    Raises TimeoutError after `bound_s` without a confirm (not an RPC: the channel stays open),
    PublishError if nothing is bound (mandatory: Basic.Return), DeliveryError on a nack.
    """
    properties = msg.unparked().amqp_properties()
    await channel.basic_publish(
        msg.body, exchange=exchange, routing_key=destination, properties=properties, mandatory=True, timeout=bound_s
    )


def broker_error(exc: BaseException, settings: Settings, destination: str) -> BrokerUnavailable:
    """A failed publish, ack or read, in words; the message stays parked."""
    b = settings.broker
    if isinstance(exc, StoreError):  # the journal's: the publish was confirmed, the ack not sent
        why = str(exc)
    elif isinstance(exc, TimeoutError):
        why = f"the broker did not confirm a publish within {b.confirm_timeout_s:g}s"
    elif isinstance(exc, aiormq.exceptions.PublishError):  # Basic.Return: nothing bound
        why = f"the broker has no queue for destination {destination!r} (message returned unroutable)"
    elif isinstance(exc, aiormq.exceptions.DeliveryError):  # Basic.Nack
        why = "the broker refused a publish (nack)"
    elif isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        why = f"a queue or exchange is missing ({exc}); start the gateway once so it declares its topology"
    else:
        why = f"the broker connection failed ({exc or type(exc).__name__})"
    return BrokerUnavailable(why, reason="broker_unavailable", retry_after_s=b.retry_after_s)
