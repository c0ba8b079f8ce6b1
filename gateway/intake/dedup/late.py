"""After a confirm timeout: keep the MessageId's claim until the broker's late answer settles it.

The partner has its 503 already; the publish goes on waiting (gateway/broker/publisher.py hands it
over in `ConfirmTimeout.outcome`) and one tracked task per claim settles it by the answer:
a late ack records the id as queued, a late nack, return or lost connection releases the
claim. No answer within `wait_s`, a stop, or an unexpected error leave the claim to go stale
(gateway/intake/dedup/policy.py says what that costs). Every ending is logged and counted; nothing is
swallowed and no task outlives `close()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import BrokerUnavailable
from gateway.journal.store import Claimed, Receipt

log = logging.getLogger("swgw.dedup")

# How a claim whose confirm timed out was settled (swgw_dedup_late_outcomes_total{outcome}).
LATE_OUTCOMES = ("queued", "released", "expired", "cancelled", "error")


class LateConfirms:
    """Background waits for timed-out publishes, each settling its own claim.

    `record(claim, receipt)` and `release(claim)` are the Deduplicator's store calls: they
    log and count their own store failures and return False then. `wait_s` bounds each wait
    (seconds, `[dedup] late_confirm_wait_s`, default 30). `on_outcome(outcome)` is called
    once per wait with one of LATE_OUTCOMES.
    """

    def __init__(
        self,
        *,
        record: Callable[[Claimed, Receipt], Awaitable[bool]],
        release: Callable[[Claimed], Awaitable[bool]],
        wait_s: float,
        on_outcome: Callable[[str], None],
    ) -> None:
        self.record = record
        self.release = release
        self.wait_s = wait_s
        self.on_outcome = on_outcome
        self._waits: dict[asyncio.Task[None], asyncio.Task[None]] = {}  # settle task -> awaited publish
        self._closed = False

    def __len__(self) -> int:
        return len(self._waits)

    def start(self, claim: Claimed, receipt: Receipt, outcome: asyncio.Task[None]) -> None:
        """Take `outcome` over and settle `claim` by it in the background."""
        if self._closed:  # stopping: nobody would wait for it; the claim goes stale
            outcome.cancel()
            self.on_outcome("cancelled")
            return
        task = asyncio.create_task(self._settle(claim, receipt, outcome), name=f"dedup-settle-{claim.message_id}")
        self._waits[task] = outcome
        task.add_done_callback(self._forget)

    async def settled(self) -> None:
        """Return once every wait started so far has ended (tests, drains)."""
        if self._waits:
            await asyncio.wait(list(self._waits))

    async def close(self) -> None:
        """Stop waiting: each claim stays pending (unknown) and goes stale after `claim_timeout_s`."""
        self._closed = True
        # Cancel the awaited publishes, not the settle tasks: each one then logs and counts its
        # end ("cancelled"), even one that had not started running yet.
        for outcome in self._waits.values():
            outcome.cancel()
        await asyncio.gather(*self._waits, return_exceptions=True)  # only cancellations: settles never raise

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._waits.pop(task, None)

    async def _settle(self, claim: Claimed, receipt: Receipt, outcome: asyncio.Task[None]) -> None:
        """Await a timed-out publish's late answer (bounded) and settle its claim with it.

        Never raises except on cancellation: every ending is logged and counted in on_outcome.
        """
        ended = "error"
        extra = {"message_id": claim.message_id, "partner": claim.sender, "destination": receipt.destination}
        try:
            try:
                # The timeout cancels the awaited publish as well: it is never left running.
                async with asyncio.timeout(self.wait_s):
                    await outcome
            except TimeoutError:
                ended = "expired"
                log.warning(
                    "no answer from the broker for %s within %gs after its confirm timed out; the claim stays "
                    "pending and the id is accepted again after the claim timeout",
                    claim.message_id,
                    self.wait_s,
                    extra={"event": "late_confirm_expired", **extra},
                )
                return
            except BrokerUnavailable as exc:
                if await self.release(claim):
                    ended = "released"
                log.info(
                    "late answer for %s: not queued (%s); claim released, a retry will be accepted",
                    claim.message_id,
                    exc.reason,
                    extra={"event": "late_confirm_failed", **extra},
                )
                return
            if await self.record(claim, receipt):
                ended = "queued"
                log.info(
                    "late confirm for %s: recorded as queued; a retry gets the receipt",
                    claim.message_id,
                    extra={"event": "late_confirm", **extra},
                )
        except asyncio.CancelledError:
            ended = "cancelled"
            log.warning(
                "stopped waiting for the broker's answer on %s (gateway stopping); the claim stays pending "
                "until the claim timeout",
                claim.message_id,
                extra={"event": "late_confirm_cancelled", **extra},
            )
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # this task itself was cancelled, not only the publish
                raise
        except Exception:
            # An unexpected answer (not an ack, not a BrokerUnavailable): the outcome is unknown,
            # so the claim is left to go stale. Logged with its traceback, counted as "error".
            log.exception(
                "settling the claim on %s after a confirm timeout failed",
                claim.message_id,
                extra={"event": "late_confirm_error", **extra},
            )
        finally:
            self.on_outcome(ended)
