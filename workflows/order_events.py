"""An order's events as its signal and update handlers take them: checked by
workflows/event_rules.py, then applied, held until the event they follow,
or recorded as rejected with the reason. The handlers only record; the
order's `run` reacts to what they record.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import metrics
    from workflows.event_rules import EventRejected, Rejection, check_event, release_held, take_event
    from workflows.models import EventEnvelope, JourneyState, OrderStatusView, RejectedEvent
    from workflows.order_view import OrderView

# Rejections are kept for operators, but a flood of bad events must not grow
# workflow state without bound.
MAX_REJECTED_KEPT = 50
# Patched only where an early event comes, so ordinary orders pay no
# TemporalChangeVersion upsert: an order that refused early events as out of
# order, before they were held, replays as it ran.
HOLD_EARLY_EVENTS = "hold-early-events"


class OrderEvents:
    def __init__(self, state: JourneyState | None, view: OrderView) -> None:
        self._state = state
        self._view = view

    def on_signal(self, event: str, raw: Any) -> None:
        """A signal's event: taken, or recorded as rejected."""
        try:
            self._take(event, raw)
        except EventRejected as rejection:
            self._reject(event, rejection, via="signal")
        if self._state is not None:
            self._view.show()

    def validate(self, envelope: EventEnvelope) -> None:
        """The `apply_event` update's validator: a bad event is refused to the
        caller, with the reason, before it reaches history."""
        try:
            check_event(self._state, envelope.event, envelope.payload, workflow.now())
        except EventRejected as rejection:
            metrics.event_rejected(envelope.event, rejection.kind, via="update")
            raise ValueError(str(rejection)) from None

    def apply(self, envelope: EventEnvelope) -> OrderStatusView:
        """The `apply_event` update, once validated: the new status."""
        try:
            self._take(envelope.event, envelope.payload)
        except EventRejected as rejection:  # an early event, to a run that refused them before
            raise ApplicationError(str(rejection), non_retryable=True) from None
        self._view.show()
        return self._view.view()

    def release_held(self) -> None:
        """The order has decided to end: each event it held is refused, with
        the reason."""
        for event, rejection in release_held(self._state, workflow.now()):
            self._reject(event, rejection, via="held")
        self._view.show()

    def _take(self, event: str, raw: Any) -> None:
        checked = check_event(self._state, event, raw, workflow.now())
        if checked.early and not workflow.patched(HOLD_EARLY_EVENTS):
            raise EventRejected(Rejection.OUT_OF_ORDER, checked.early.reason)
        if checked.held_until:
            metrics.event_held(event)
        for released, rejection in take_event(self._state, checked, workflow.now()):
            self._reject(released, rejection, via="held")

    def _reject(self, event: str, rejection: EventRejected, via: str) -> None:
        # The reason stays out of the log: it may quote a backend's free text.
        workflow.logger.warning("rejected a %s event", event)
        metrics.event_rejected(event, rejection.kind, via=via)
        s = self._state
        if s is None:
            return
        s.rejected.append(RejectedEvent(event=event, reason=str(rejection), at=workflow.now()))
        del s.rejected[:-MAX_REJECTED_KEPT]
        s.rejected_total += 1
