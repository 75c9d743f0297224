"""What the workflows count for Prometheus: messages by touchpoint, channel
and outcome, how long each waited from being queued to its outcome,
deadlines that passed, and events refused.

Through workflow.metric_meter(), which records nothing while a workflow
replays its history: each is counted once, by the worker that decided it,
however often the workflow is replayed later. A workflow task that fails
after counting and is retried counts again, which is rare enough for
operations' figures. Labels are fixed words, never about a customer or an
order (README, "Metrics").
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.event_rules import Rejection
    from workflows.models import Channel, DeliveryState, MessageOutcome, QueuedMessage, Touchpoint

MESSAGES = "orders_messages"
MESSAGE_WAIT = "orders_message_wait"
DEADLINE_BREACHES = "orders_deadline_breaches"
EVENTS_REJECTED = "orders_events_rejected"


def message_outcome(message: QueuedMessage, outcome: MessageOutcome) -> None:
    """A message reached its outcome. A mail in doubt that is to be settled
    later (from SendGrid's Email Activity) is counted then, with the outcome
    it settles to, so each message is counted once."""
    if outcome.awaits_settlement:
        return
    count_message(message.kind, message.channel, outcome.state)
    workflow.metric_meter().create_histogram_timedelta(
        MESSAGE_WAIT, "Time from the journey queueing a message to its outcome"
    ).record(workflow.now() - message.queued_at, {"channel": message.channel.value, "outcome": outcome.state.value})


def count_message(kind: Touchpoint, channel: Channel, outcome: DeliveryState) -> None:
    workflow.metric_meter().create_counter(MESSAGES, "Messages by touchpoint, channel and outcome").add(
        1, {"touchpoint": kind.value, "channel": channel.value, "outcome": outcome.value}
    )


def deadline_passed(deadline: str) -> None:
    """`deadline`: the journey setting that passed (payment_deadline, ...)."""
    workflow.metric_meter().create_counter(
        DEADLINE_BREACHES, "Deadlines that passed before the event they waited for"
    ).add(1, {"deadline": deadline})


def event_rejected(event: str, kind: Rejection, via: str) -> None:
    """`via`: signal (recorded on the order) or update (refused to the caller)."""
    workflow.metric_meter().create_counter(EVENTS_REJECTED, "Events an order refused").add(
        1, {"event": event, "reason": kind.value, "via": via}
    )
