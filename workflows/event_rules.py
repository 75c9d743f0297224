"""Which event an order accepts, when, and why not: pure functions of the
journey state, unit-tested without a server (tests/test_event_rules.py).

`check_event` parses an event and holds it against what the order has
accepted and decided so far. It changes nothing; `accept_event` records an
accepted one. A rejection carries the reason the caller (and the Web UI) sees,
and its kind: one of a few fixed words, which metrics count by.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from workflows.models import (
    EVENT_MODELS,
    FeedbackSubmitted,
    JourneyState,
    OrderCancelled,
    OrderDelivered,
    OrderDispatched,
    OrderStatus,
    OutForDelivery,
    ParcelCollected,
    PaymentReceived,
    WireModel,
)

# A carrier's clock may run a little ahead of ours; a delivery further in the
# future than this is a mistake, and would push the locker deadline out.
DELIVERY_CLOCK_SKEW = timedelta(minutes=15)

FINAL_STATUSES = (OrderStatus.CANCELLED, OrderStatus.COMPLETED, OrderStatus.LOST)


class Rejection(StrEnum):
    """Why an event was refused, without what it said (amounts, ids, dates)."""

    UNKNOWN_EVENT = "unknown_event"
    MALFORMED = "malformed"
    ORDER_REJECTED = "order_rejected"
    ORDER_OVER = "order_over"
    DECIDED = "decided"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    CANCELLED = "cancelled"
    ALREADY_DISPATCHED = "already_dispatched"
    AMOUNT_MISMATCH = "amount_mismatch"
    LOCKER_CODE_MISSING = "locker_code_missing"
    IN_THE_FUTURE = "in_the_future"
    NOT_A_LOCKER = "not_a_locker"
    WINDOW_CLOSED = "window_closed"


class EventRejected(Exception):
    def __init__(self, kind: Rejection, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def format_validation_error(err: ValidationError) -> str:
    """Where and what, never the offending value (it may be personal data)."""
    parts = []
    for e in err.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in e["loc"]) or "payload"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def parse_event(event: str, raw: Any) -> WireModel:
    model = EVENT_MODELS.get(event)
    if model is None:
        raise EventRejected(Rejection.UNKNOWN_EVENT, f"unknown event {event!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise EventRejected(Rejection.MALFORMED, f"malformed {event}: {format_validation_error(err)}") from None


def check_event(state: JourneyState | None, event: str, raw: Any, now: datetime) -> WireModel:
    """The parsed event if the order accepts it now; raises EventRejected."""
    parsed = parse_event(event, raw)
    if state is None:
        raise EventRejected(Rejection.ORDER_REJECTED, "the order was rejected")
    if state.status is OrderStatus.DUPLICATE:
        raise EventRejected(Rejection.ORDER_OVER, "this run is a second start of a recorded order: it takes no events")
    if state.status in FINAL_STATUSES:
        raise EventRejected(Rejection.ORDER_OVER, f"order is already {state.status.value}")
    _RULES[type(parsed)](state, parsed, now)
    return parsed


def accept_event(state: JourneyState, parsed: WireModel, now: datetime) -> None:
    field, accepted_at = _KEPT_AS[type(parsed)]
    setattr(state, field, parsed)
    if accepted_at:
        setattr(state, accepted_at, now)


def _not_decided(state: JourneyState) -> None:
    """Once the journey has decided to end, what it excludes is refused,
    though carrying the decision out (a database write, a message) takes time."""
    if state.decision:
        raise EventRejected(Rejection.DECIDED, f"order is {state.decision}")


def _payment(state: JourneyState, payment: PaymentReceived, now: datetime) -> None:
    if state.payment:
        raise EventRejected(Rejection.DUPLICATE, f"duplicate payment: {state.payment.payment_id} was already received")
    if state.cancel:
        raise EventRejected(Rejection.CANCELLED, "order is cancelled")
    _not_decided(state)
    order = state.order
    if payment.currency != order.currency or payment.amount != order.total:
        raise EventRejected(
            Rejection.AMOUNT_MISMATCH,
            f"payment of {payment.amount} {payment.currency} does not match the order total "
            f"{order.total} {order.currency}",
        )


def _cancellation(state: JourneyState, cancel: OrderCancelled, now: datetime) -> None:
    if state.cancel:
        raise EventRejected(Rejection.DUPLICATE, "duplicate cancellation")
    if state.dispatch:
        raise EventRejected(Rejection.ALREADY_DISPATCHED, "cannot cancel: the order has already been dispatched")
    _not_decided(state)


def _dispatch(state: JourneyState, dispatch: OrderDispatched, now: datetime) -> None:
    if state.dispatch:
        raise EventRejected(Rejection.DUPLICATE, "duplicate dispatch")
    if state.cancel:
        raise EventRejected(Rejection.CANCELLED, "order is cancelled")
    _not_decided(state)
    if not state.payment:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: dispatched before payment was received")


def _out_for_delivery(state: JourneyState, notice: OutForDelivery, now: datetime) -> None:
    if not state.dispatch:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: out for delivery before dispatch")
    if state.delivery_day or state.delivered:
        raise EventRejected(Rejection.DUPLICATE, "duplicate out_for_delivery")
    _not_decided(state)


def _delivery(state: JourneyState, delivered: OrderDelivered, now: datetime) -> None:
    if not state.dispatch:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: delivered before dispatch")
    if state.delivered:
        raise EventRejected(Rejection.DUPLICATE, "duplicate delivery")
    _not_decided(state)
    if state.order.delivery.method == "locker" and not delivered.locker_pickup_code:
        raise EventRejected(Rejection.LOCKER_CODE_MISSING, "locker delivery needs locker_pickup_code")
    if delivered.delivered_at > now + DELIVERY_CLOCK_SKEW:
        raise EventRejected(Rejection.IN_THE_FUTURE, f"delivered_at {delivered.delivered_at.isoformat()} is in the future")


def _collection(state: JourneyState, collected: ParcelCollected, now: datetime) -> None:
    if state.order.delivery.method != "locker":
        raise EventRejected(Rejection.NOT_A_LOCKER, "parcel_collected applies to locker deliveries only")
    if not state.delivered:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: collected before delivery")
    if state.collected:
        raise EventRejected(Rejection.DUPLICATE, "duplicate parcel_collected")


def _feedback(state: JourneyState, feedback: FeedbackSubmitted, now: datetime) -> None:
    if not state.delivered:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: feedback before delivery")
    if state.feedback:
        raise EventRejected(Rejection.DUPLICATE, "duplicate feedback")
    if state.feedback_asked_at and state.setup and now > state.feedback_asked_at + state.setup.settings.feedback_window:
        raise EventRejected(Rejection.WINDOW_CLOSED, "the feedback window has closed")


# Where the journey state keeps each accepted event, and, for the events
# deadlines count from, when it was accepted.
_KEPT_AS: dict[type[WireModel], tuple[str, str | None]] = {
    PaymentReceived: ("payment", "paid_at"),
    OrderDispatched: ("dispatch", None),
    OutForDelivery: ("delivery_day", None),
    OrderDelivered: ("delivered", "delivered_seen_at"),
    ParcelCollected: ("collected", None),
    OrderCancelled: ("cancel", None),
    FeedbackSubmitted: ("feedback", None),
}

_RULES = {
    PaymentReceived: _payment,
    OrderCancelled: _cancellation,
    OrderDispatched: _dispatch,
    OutForDelivery: _out_for_delivery,
    OrderDelivered: _delivery,
    ParcelCollected: _collection,
    FeedbackSubmitted: _feedback,
}
