"""Which event an order accepts, when, and why not: pure functions of the
journey state, unit-tested without a server (tests/test_event_rules.py).

`check_event` parses an event and holds it against what the order has
accepted and decided so far. It changes nothing; `take_event` records it. A
rejection carries the reason the caller (and the Web UI) sees, and its kind:
one of a few fixed words, which metrics count by.

Carriers' feeds arrive out of order. An event that comes before the one it
follows is held (`JourneyState.held`) and applied when that one comes; a
delivery after the payment implies the dispatch. A held event the order can
no longer take (it was cancelled, the parcel declared lost) is refused then,
with the reason (`release_held`):

| early event | held until |
| --- | --- |
| order_dispatched | payment_received |
| out_for_delivery | order_dispatched (refused once delivered) |
| order_delivered | payment_received; after it, applied at once |
| parcel_collected, feedback_submitted | order_delivered |

A complaint (`complaint_received`) is taken at any stage while the order's
workflow runs, even once the order is over, and owes the order a case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from workflows.models import (
    EVENT_MODELS,
    CaseTrigger,
    ComplaintReceived,
    EarlyEvent,
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
    UNKNOWN_ITEM = "unknown_item"


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


@dataclass(frozen=True)
class Early:
    """An event that came before the one it follows."""

    # How the rules refused it before early events were held: an order that
    # refused one then replays so.
    reason: str
    # The event it is held until; None: it is applied at once, in that
    # event's stead (a delivery implies the dispatch).
    until: str | None


@dataclass(frozen=True)
class Checked:
    """An event the order takes: applied now, or held until `held_until`."""

    name: str
    event: WireModel
    early: Early | None = None

    @property
    def held_until(self) -> str | None:
        return self.early.until if self.early else None


def check_event(state: JourneyState | None, event: str, raw: Any, now: datetime) -> Checked:
    """The parsed event if the order takes it now; raises EventRejected."""
    parsed = parse_event(event, raw)
    if state is not None:
        held = next((h for h in state.held if h.event == event), None)
        if held is not None:
            raise EventRejected(Rejection.DUPLICATE, f"duplicate {event}: one is held until {held.until}")
    return Checked(event, parsed, _check(state, parsed, now))


def _check(state: JourneyState | None, parsed: WireModel, now: datetime) -> Early | None:
    if state is None:
        raise EventRejected(Rejection.ORDER_REJECTED, "the order was rejected")
    if state.status is OrderStatus.DUPLICATE:
        raise EventRejected(Rejection.ORDER_OVER, "this run is a second start of a recorded order: it takes no events")
    if state.status in FINAL_STATUSES and not isinstance(parsed, ComplaintReceived):
        raise EventRejected(Rejection.ORDER_OVER, f"order is already {state.status.value}")
    return _RULES[type(parsed)](state, parsed, now)


def take_event(state: JourneyState, checked: Checked, now: datetime) -> list[tuple[str, EventRejected]]:
    """Hold `checked`, or record it and apply the held events it releases.
    Returns the held events the order now refuses, with the rejection."""
    if checked.held_until:
        payload = checked.event.model_dump(mode="json")
        state.held.append(EarlyEvent(event=checked.name, until=checked.held_until, at=now, payload=payload))
        return []
    _record(state, checked.event, now)
    return release_held(state, now)


def release_held(state: JourneyState, now: datetime) -> list[tuple[str, EventRejected]]:
    """Apply each held event the order now takes, in the order they came
    (one may release the next), and drop each it now refuses. Returns those
    refused, with the rejection."""
    refused: list[tuple[str, EventRejected]] = []
    while True:
        for held in state.held:
            parsed = EVENT_MODELS[held.event].model_validate(held.payload)
            try:
                early = _check(state, parsed, now)
            except EventRejected as rejection:
                state.held.remove(held)
                refused.append((held.event, rejection))
                break
            if early is None or early.until is None:
                state.held.remove(held)
                _record(state, parsed, now)
                break
        else:
            return refused


def _record(state: JourneyState, parsed: WireModel, now: datetime) -> None:
    if isinstance(parsed, ComplaintReceived):
        key = parsed.case_trigger_key(state.order.order_id)
        state.cases_owed.append(CaseTrigger(order_id=state.order.order_id, trigger="complaint", trigger_key=key, text=parsed.text))
        return
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
    if state.delivered:
        raise EventRejected(Rejection.ALREADY_DISPATCHED, "cannot cancel: the order has already been delivered")
    _not_decided(state)


def _dispatch(state: JourneyState, dispatch: OrderDispatched, now: datetime) -> Early | None:
    if state.dispatch:
        raise EventRejected(Rejection.DUPLICATE, "duplicate dispatch")
    if state.cancel:
        raise EventRejected(Rejection.CANCELLED, "order is cancelled")
    _not_decided(state)
    if state.delivered:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: dispatched after the delivery")
    if not state.payment:
        return Early("out of order: dispatched before payment was received", "payment_received")
    return None


def _out_for_delivery(state: JourneyState, notice: OutForDelivery, now: datetime) -> Early | None:
    if state.delivery_day:
        raise EventRejected(Rejection.DUPLICATE, "duplicate out_for_delivery")
    if state.delivered:
        raise EventRejected(Rejection.OUT_OF_ORDER, "out of order: out for delivery after the delivery")
    _not_decided(state)
    if not state.dispatch:
        return Early("out of order: out for delivery before dispatch", "order_dispatched")
    return None


def _delivery(state: JourneyState, delivered: OrderDelivered, now: datetime) -> Early | None:
    if state.delivered:
        raise EventRejected(Rejection.DUPLICATE, "duplicate delivery")
    if state.cancel:
        raise EventRejected(Rejection.CANCELLED, "order is cancelled")
    _not_decided(state)
    if state.order.delivery.method == "locker" and not delivered.locker_pickup_code:
        raise EventRejected(Rejection.LOCKER_CODE_MISSING, "locker delivery needs locker_pickup_code")
    if delivered.delivered_at > now + DELIVERY_CLOCK_SKEW:
        raise EventRejected(Rejection.IN_THE_FUTURE, f"delivered_at {delivered.delivered_at.isoformat()} is in the future")
    if not state.dispatch:
        return Early("out of order: delivered before dispatch", None if state.payment else "payment_received")
    return None


def _collection(state: JourneyState, collected: ParcelCollected, now: datetime) -> Early | None:
    if state.order.delivery.method != "locker":
        raise EventRejected(Rejection.NOT_A_LOCKER, "parcel_collected applies to locker deliveries only")
    if state.collected:
        raise EventRejected(Rejection.DUPLICATE, "duplicate parcel_collected")
    if not state.delivered:
        _not_decided(state)
        return Early("out of order: collected before delivery", "order_delivered")
    return None


def _feedback(state: JourneyState, feedback: FeedbackSubmitted, now: datetime) -> Early | None:
    if state.feedback:
        raise EventRejected(Rejection.DUPLICATE, "duplicate feedback")
    unknown = sorted(set(feedback.item_ratings or ()) - {item.sku for item in state.order.items})
    if unknown:
        raise EventRejected(Rejection.UNKNOWN_ITEM, f"item_ratings names items not in the order: {', '.join(unknown)}")
    if not state.delivered:
        _not_decided(state)
        return Early("out of order: feedback before delivery", "order_delivered")
    if state.feedback_asked_at and state.setup and now > state.feedback_asked_at + state.setup.settings.feedback_window:
        raise EventRejected(Rejection.WINDOW_CLOSED, "the feedback window has closed")
    return None


def _complaint(state: JourneyState, complaint: ComplaintReceived, now: datetime) -> None:
    """Taken whenever it comes: an unhappy customer is heard at any stage."""


# Where the journey state keeps each accepted event, and, for the events
# deadlines count from, when it was accepted.
_KEPT_AS: dict[type[WireModel], tuple[str, str | None]] = {
    PaymentReceived: ("payment", "paid_at"),
    OrderDispatched: ("dispatch", "dispatched_at"),
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
    ComplaintReceived: _complaint,
}
