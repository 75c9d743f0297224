"""One message through the send_message activity, for the lanes
(workflows/lanes.py) and an operator's resend: the activity with its retry
policy, the customer's quiet hours for SMS, the wait the marketing frequency
cap asks for, staleness, the pause while a provider rejects our
credentials, and the wait before a message in doubt is settled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.messaging import MessagingActivities
    from workflows import channel_policy
    from workflows.models import DeliveryState, MessageOutcome, MessageRequest, QueuedMessage
    from workflows.retries import SEND_RETRY, SEND_TIMEOUTS
    from workflows.waiting import pause_until

# The activity's error type when a provider rejects our credentials.
PROVIDER_MISCONFIGURED = "ProviderMisconfigured"
QUIET_HOURS_EVERY_ATTEMPT = "quiet-hours-every-attempt"


async def send(
    request: MessageRequest,
    message: QueuedMessage,
    withdrawn: Callable[[], bool],
    *,
    paused_retry: timedelta,
    on_paused: Callable[[], None],
    attempted: Callable[[bool], None],
) -> MessageOutcome:
    """The activity's outcome; raises CancelledError once `withdrawn`. A
    message deferred past the moment it is useful comes back STALE.

    An SMS keeps the request's quiet hours before every attempt: a wait for
    the marketing cap or a paused provider may end in the night (and the
    activity refuses one inside them should its own retries get there).
    `attempted(True)` as an activity is scheduled (from then on its request
    may reach the provider), `attempted(False)` when it comes back DEFERRED
    (no request was made)."""
    not_before, first = None, True
    while True:
        quiet_end = request.quiet_hours.end(not_before or workflow.now()) if request.quiet_hours else None
        # Patched after the first attempt: an order whose later attempt went
        # in the night replays as it ran (a marker, billed: only then).
        if quiet_end is not None and (first or workflow.patched(QUIET_HOURS_EVERY_ATTEMPT)):
            not_before = quiet_end
        first = False
        if not_before is not None:
            if channel_policy.is_stale_at(not_before, message.kind, message.queued_at, message.details):
                return MessageOutcome(key=request.key, channel=message.channel, state=DeliveryState.STALE)
            await pause_until(not_before, withdrawn)
            not_before = None
        try:
            attempted(True)
            outcome = await workflow.execute_activity_method(
                MessagingActivities.send_message,
                request,
                retry_policy=SEND_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                **SEND_TIMEOUTS,
            )
            if outcome.state is not DeliveryState.DEFERRED:
                return outcome
            attempted(False)
            not_before = outcome.not_before
            continue
        except ActivityError as err:
            cause = err.cause
            # Once withdrawn, the server retries nothing: an attempt that
            # ran on and failed is as good as cancelled.
            if withdrawn() or isinstance(cause, CancelledError):
                raise asyncio.CancelledError from None
            if not (isinstance(cause, ApplicationError) and cause.type == PROVIDER_MISCONFIGURED):
                return MessageOutcome(
                    key=request.key, channel=message.channel, state=DeliveryState.FAILED, error=str(cause or err)
                )
        # Our credentials are wrong: wait for the fix instead of retrying all day.
        on_paused()
        await pause_until(workflow.now() + paused_retry, withdrawn)


async def settle_in_doubt(
    outcome: MessageOutcome, settle: Callable[[], Awaitable[MessageOutcome]], withdrawn: Callable[[], bool]
) -> MessageOutcome:
    """A message in doubt with its settle moment: one durable timer until
    then, and `settle` (the same key, mode SETTLE); again should that leave it
    in doubt anew. Raises CancelledError if `withdrawn` while it waits."""
    while outcome.state is DeliveryState.IN_DOUBT and outcome.not_before is not None:
        if outcome.not_before > workflow.now():
            await pause_until(outcome.not_before, withdrawn)
        outcome = await settle()
    return outcome
