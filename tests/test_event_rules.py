"""What an order accepts, when, and why not: the event rules as pure
functions, without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from tests.conftest import new_order, payment_for
from workflows.event_rules import EventRejected, check_event, format_validation_error, release_held, take_event
from workflows.models import JourneyState, OrderInput, OrderStatus

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
DISPATCH = {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": "2026-11-24"}


def journey(**order_changes) -> tuple[JourneyState, dict]:
    order = new_order(**order_changes)
    return JourneyState(order=OrderInput.model_validate(order), started_at=NOW), order


def apply(state: JourneyState, event: str, payload, at: datetime = NOW) -> list[tuple[str, str]]:
    """Take the event; the held events it makes the order refuse, with the reason."""
    return [(name, str(rejection)) for name, rejection in take_event(state, check_event(state, event, payload, at), at)]


def held(state: JourneyState) -> list[tuple[str, str]]:
    return [(h.event, h.until) for h in state.held]


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
        (["pay"], "payment_received", None, "duplicate payment", "duplicate"),
        (["pay", "dispatch"], "order_cancelled", {"reason": "x"}, "cannot cancel: the order has already been dispatched", "already_dispatched"),
        (["pay", "deliver"], "order_cancelled", {"reason": "x"}, "cannot cancel: the order has already been delivered", "already_dispatched"),
        (["cancel"], "payment_received", None, "order is cancelled", "cancelled"),
        (["cancel"], "order_dispatched", DISPATCH, "order is cancelled", "cancelled"),
        (["pay", "deliver"], "order_dispatched", DISPATCH, "out of order: dispatched after the delivery", "out_of_order"),
        (["pay", "deliver"], "out_for_delivery", {"date": "2026-11-24"}, "out of order: out for delivery after the delivery", "out_of_order"),
        (["early_delivery"], "order_delivered", {"delivered_at": NOW.isoformat()}, "duplicate order_delivered: one is held until payment_received", "duplicate"),
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
             "cancel": ("order_cancelled", {"reason": "x"}), "deliver": ("order_delivered", {"delivered_at": NOW.isoformat()}),
             "early_delivery": ("order_delivered", {"delivered_at": NOW.isoformat()})}
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


# --- events that come before the one they follow (issue 16, item 6) ----------------

DELIVERED = {"delivered_at": NOW.isoformat(), "locker_pickup_code": "123"}
FEEDBACK = {"item_rating": 5, "seller_rating": 4}


@pytest.mark.parametrize(
    ("before", "event", "payload", "until", "then", "kept_as"),
    [
        ([], "order_dispatched", DISPATCH, "payment_received", "pay", "dispatch"),
        (["pay"], "out_for_delivery", {"date": "2026-11-24"}, "order_dispatched", "dispatch", "delivery_day"),
        ([], "order_delivered", DELIVERED, "payment_received", "pay", "delivered"),
        (["pay", "dispatch"], "parcel_collected", {}, "order_delivered", "deliver", "collected"),
        (["pay", "dispatch"], "feedback_submitted", FEEDBACK, "order_delivered", "deliver", "feedback"),
    ],
)
def test_item16_6_an_early_event_is_held_until_the_event_it_follows(before, event, payload, until, then, kept_as):
    """A carrier's feed out of order: held, with what it waits for, and
    applied when that event comes. `early` keeps the reason the rules gave
    before events were held, so an order that refused one replays as it ran."""
    state, order = journey(delivery={"method": "locker", "locker_id": "L1"})
    steps = {"pay": ("payment_received", payment_for(order)), "dispatch": ("order_dispatched", DISPATCH),
             "deliver": ("order_delivered", DELIVERED)}
    for step in before:
        apply(state, *steps[step])
    checked = check_event(state, event, payload, NOW)
    assert checked.held_until == until and checked.early.reason.startswith("out of order: ")
    assert apply(state, event, payload) == []
    assert held(state) == [(event, until)] and getattr(state, kept_as) is None
    assert state.held[0].at == NOW
    later = NOW + timedelta(hours=1)
    assert apply(state, *steps[then], at=later) == []
    assert held(state) == [] and getattr(state, kept_as) is not None


def test_item16_6_a_delivery_after_payment_implies_the_dispatch():
    state, order = journey()
    apply(state, "payment_received", payment_for(order))
    checked = check_event(state, "order_delivered", {"delivered_at": NOW.isoformat()}, NOW)
    assert checked.held_until is None and checked.early.reason == "out of order: delivered before dispatch"
    apply(state, "order_delivered", {"delivered_at": NOW.isoformat()})
    assert state.delivered is not None and state.dispatch is None and state.held == []


def test_item16_6_released_events_apply_in_the_order_of_the_journey():
    """Dispatch and out-for-delivery both before payment: the payment
    releases the dispatch, which releases the out-for-delivery."""
    state, order = journey()
    apply(state, "out_for_delivery", {"date": "2026-11-24"})
    apply(state, "order_dispatched", DISPATCH)
    assert held(state) == [("out_for_delivery", "order_dispatched"), ("order_dispatched", "payment_received")]
    apply(state, "payment_received", payment_for(order))
    assert state.dispatch is not None and state.delivery_day is not None and state.held == []


def test_item16_6_a_held_event_is_refused_with_the_reason_when_the_order_ends():
    state, order = journey(delivery={"method": "locker", "locker_id": "L1"})
    apply(state, "order_dispatched", DISPATCH)
    state.decision = "being cancelled: payment not received within 72 hours"
    refused = release_held(state, NOW)
    assert [(name, str(r), r.kind) for name, r in refused] == [
        ("order_dispatched", "order is being cancelled: payment not received within 72 hours", "decided")
    ]
    assert state.held == []

    state, order = journey(delivery={"method": "locker", "locker_id": "L1"})
    apply(state, "payment_received", payment_for(order))
    apply(state, "order_dispatched", DISPATCH)
    apply(state, "parcel_collected", {})
    apply(state, "feedback_submitted", FEEDBACK)
    state.decision = "declared lost"
    assert [(name, str(r)) for name, r in release_held(state, NOW)] == [
        ("parcel_collected", "order is declared lost"),
        ("feedback_submitted", "order is declared lost"),
    ]


def test_item16_6_a_cancellation_accepted_while_an_event_is_held_refuses_it():
    """Held events are not accepted ones: a cancellation may still come,
    and the held event is refused with it."""
    state, order = journey()
    apply(state, "order_delivered", {"delivered_at": NOW.isoformat()})
    assert apply(state, "order_cancelled", {"reason": "changed my mind"}) == [("order_delivered", "order is cancelled")]
    assert state.held == []


def test_item16_6_once_the_order_is_decided_an_early_event_is_refused_not_held():
    state, order = journey()
    state.decision = "being cancelled: changed my mind"
    assert reason(state, "order_delivered", {"delivered_at": NOW.isoformat()}) == "order is being cancelled: changed my mind"


def test_the_same_complaint_twice_owes_one_case_key_and_another_complaint_its_own():
    state, _ = journey()
    for text in ("Charged twice", "Charged twice", "Charged three times"):
        apply(state, "complaint_received", {"channel": "phone", "text": text})
    keys = [owed.trigger_key for owed in state.cases_owed]
    assert keys[0] == keys[1] != keys[2]
    assert keys[0].startswith(f"order-{state.order.order_id}:complaint-")
