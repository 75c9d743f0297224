"""Temporal Cloud actions counted from a workflow's history, by the published
billing rules (docs.temporal.io/cloud/actions): a start, every signal, every
activity attempt, every timer (including the timers SDKs start for waits with
a timeout), every search-attribute upsert, every update. Queries leave no
history; the caller counts its own."""

from __future__ import annotations

from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

BILLED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "start",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer",
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "search_attribute_upsert",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
}


def billable_actions(history: WorkflowHistory) -> Counter[str]:
    counts: Counter[str] = Counter()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            # One started event per activity, carrying the attempt that ran:
            # earlier failed attempts are billed too.
            counts["activity_attempt"] += event.activity_task_started_event_attributes.attempt
        elif event.event_type in BILLED:
            counts[BILLED[event.event_type]] += 1
    return counts


def history_size(history: WorkflowHistory) -> tuple[int, int]:
    """(events, bytes) of a history as the server stores it."""
    return len(history.events), sum(e.ByteSize() for e in history.events)
