"""What an order accepts, when, and why not: the event rules as pure
functions, without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from tests.conftest import new_order, payment_for
from workflows.event_rules import EventRejected, accept_event, check_event, format_validation_error
from workflows.models import JourneyState, OrderInput, OrderStatus

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
DISPATCH = {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": "2026-11-24"}


def journey(**order_changes) -> tuple[JourneyState, dict]:
    order = new_order(**order_changes)
    return JourneyState(order=OrderInput.model_validate(order), started_at=NOW), order


def apply(state: JourneyState, event: str, payload) -> None:
    accept_event(state, check_event(state, event, payload, NOW), NOW)


def rejection(state: JourneyState | None, event: str, payload) -> EventRejected:
    with pytest.raises(EventRejected) as rejected:
        check_event(state, event, payload, NOW)
    return rejected.value


def reason(state: JourneyState | None, event: str, payload) -> str:
    return str(rejection(state, event, payload))


def test_item01_a_decision_refuses_the_events_it_excludes():
    state, order = journey()
    state.decision = "being cancelled: payment not received within 72 hours"
    assert reason(state, "payment_received", payment_for(order)) == (
        "order is being cancelled: payment not received within 72 hours"
    )
    assert reason(state, "order_cancelled", {"reason": "changed my mind"}).startswith("order is being cancelled")
    assert rejection(state, "payment_received", payment_for(order)).kind == "decided"


def test_item01_a_lost_parcel_refuses_a_late_delivery_until_the_order_ends():
    state, order = journey()
    apply(state, "payment_received", payment_for(order))
    apply(state, "order_dispatched", DISPATCH)
    state.decision = "declared lost"
    assert reason(state, "order_delivered", {"delivered_at": NOW.isoformat()}) == "order is declared lost"
    state.status = OrderStatus.LOST
    assert reason(state, "order_delivered", {"delivered_at": NOW.isoformat()}) == "order is already lost"
    assert rejection(state, "order_delivered", {"delivered_at": NOW.isoformat()}).kind == "order_over"


def test_item03_delivery_keeps_the_carriers_clock_and_refuses_the_future():
    state, order = journey(delivery={"method": "locker", "locker_id": "L1"})
    apply(state, "payment_received", payment_for(order))
    apply(state, "order_dispatched", DISPATCH)
    future = (NOW + timedelta(hours=2)).isoformat()
    assert reason(state, "order_delivered", {"delivered_at": future, "locker_pickup_code": "1"}).endswith("is in the future")
    earlier = NOW - timedelta(hours=50)
    apply(state, "order_delivered", {"delivered_at": earlier.isoformat(), "locker_pickup_code": "1"})
    assert state.delivered.delivered_at == earlier and state.delivered_seen_at == NOW


def test_payment_records_when_it_was_accepted():
    state, order = journey()
    apply(state, "payment_received", payment_for(order))
    assert state.paid_at == NOW


@pytest.mark.parametrize(
    ("events", "event", "payload", "expected", "kind"),
    [
        ([], "order_dispatched", DISPATCH, "out of order: dispatched before payment was received", "out_of_order"),
        (["pay"], "payment_received", None, "duplicate payment", "duplicate"),
        (["pay", "dispatch"], "order_cancelled", {"reason": "x"}, "cannot cancel: the order has already been dispatched", "already_dispatched"),
        (["cancel"], "payment_received", None, "order is cancelled", "cancelled"),
        ([], "order_delivered", {"delivered_at": NOW.isoformat()}, "out of order: delivered before dispatch", "out_of_order"),
        ([], "feedback_submitted", {"item_rating": 5, "seller_rating": 5}, "out of order: feedback before delivery", "out_of_order"),
        ([], "parcel_collected", {}, "parcel_collected applies to locker deliveries only", "not_a_locker"),
        ([], "no_such_event", {}, "unknown event 'no_such_event'", "unknown_event"),
        ([], "payment_received", "text", "malformed payment_received: payload: Input should be a valid dictionary", "malformed"),
        ([], "payment_received", {"payment_id": "P", "amount": "1.00", "currency": "EUR"}, "payment of 1.00 EUR does not match", "amount_mismatch"),
    ],
)
def test_out_of_order_duplicate_and_malformed_events_are_refused(events, event, payload, expected, kind):
    """With the reason, and its kind: a fixed word that metrics count by,
    never carrying what the event said (amounts, ids)."""
    state, order = journey()
    steps = {"pay": ("payment_received", payment_for(order)), "dispatch": ("order_dispatched", DISPATCH),
             "cancel": ("order_cancelled", {"reason": "x"})}
    for step in events:
        apply(state, *steps[step])
    refused = rejection(state, event, payment_for(order) if payload is None else payload)
    assert str(refused).startswith(expected)
    assert refused.kind == kind


def test_item14_an_order_rejection_never_repeats_the_customers_address():
    order = new_order()
    order["customer"]["email"] = "ada.lovelace@example"
    with pytest.raises(ValidationError) as invalid:
        OrderInput.model_validate(order)
    reason_given = format_validation_error(invalid.value)
    assert reason_given == "customer.email: Value error, not an email address"
    assert "lovelace" not in reason_given


def test_feedback_after_its_window_is_refused():
    from workflows.models import JourneySettings, OrderSetup

    state, order = journey()
    state.setup = OrderSetup(settings=JourneySettings())
    apply(state, "payment_received", payment_for(order))
    apply(state, "order_dispatched", DISPATCH)
    apply(state, "order_delivered", {"delivered_at": NOW.isoformat()})
    state.feedback_asked_at = NOW - timedelta(days=15)
    assert reason(state, "feedback_submitted", {"item_rating": 5, "seller_rating": 5}) == "the feedback window has closed"
    state.feedback_asked_at = NOW - timedelta(days=13)
    apply(state, "feedback_submitted", {"item_rating": 5, "seller_rating": 5})
