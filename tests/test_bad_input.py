"""Bad orders and events are rejected with a reason; the workflow keeps going."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.conftest import new_order, payment_for
from workflows.models import EventEnvelope, OrderStatusView


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda o: o.update(items=[]), "items: List should have at least 1 item"),
        (lambda o: o["items"][0].update(quantity=0), "items.0.quantity: Input should be greater than 0"),
        (lambda o: o["items"][0].update(unit_price="-1"), "items.0.unit_price: Input should be greater than 0"),
        (lambda o: o["customer"].update(email="not-an-email"), "customer.email: Value error, not an email address"),
        (lambda o: o["customer"].update(phone="600123123"), "customer.phone: String should match pattern"),
        (lambda o: o["delivery"].update(method="drone"), "delivery: Input tag 'drone' found using 'method' does not match"),
        (lambda o: o["customer"].update(timezone="Mars/Olympus"), "customer.timezone: Value error, unknown timezone 'Mars/Olympus'"),
        # Customer ids go into workflow ids and a search attribute, which stay plain on the server.
        (lambda o: o["customer"].update(customer_id="ada@example.com"), "customer.customer_id: must be an opaque id"),
        (lambda o: o["customer"].update(customer_id="+48600123123"), "customer.customer_id: must be an opaque id"),
    ],
)
async def test_invalid_order_ends_promptly_as_rejected(ts_env: WorkflowEnvironment, make_harness, change, reason):
    order = new_order()
    change(order)
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        result = await h.result(handle)
    assert result.status == "rejected"
    assert reason in result.rejection_reason
    assert result.needs_attention


async def test_non_object_input_is_rejected(ts_env: WorkflowEnvironment, make_harness):
    async with make_harness(ts_env) as h:
        handle = await h.client.start_workflow(
            "OrderLifecycle", "just a string", id="order-garbage", task_queue=h.task_queue, result_type=OrderStatusView
        )
        result = await h.result(handle)
        await h.keep_history(handle, "rejected_order")
    assert result.status == "rejected"


async def test_malformed_misplaced_and_duplicate_events_are_recorded(ts_env: WorkflowEnvironment, make_harness):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("parcel_collected", {})
        await handle.signal("payment_received", {"payment_id": "P1", "amount": "abc", "currency": "EUR"})
        await handle.signal("payment_received", "not even an object")
        await handle.signal("payment_received", {"payment_id": "P1", "amount": "1.00", "currency": "EUR"})
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("feedback_submitted", {"item_rating": 9, "seller_rating": 1})
        view = await h.wait_for(handle, lambda v: len(v.rejected_events) == 6)
        paid = await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.terminate("test done")
    reasons = [r.reason for r in view.rejected_events]
    assert reasons[0] == "parcel_collected applies to locker deliveries only"
    assert reasons[1].startswith("malformed payment_received: amount: Input should be a valid decimal")
    assert reasons[2].startswith("malformed payment_received: payload: Input should be a valid dictionary")
    assert reasons[3] == "payment of 1.00 EUR does not match the order total 110.00 EUR"
    assert reasons[4] == f"duplicate payment: P-{order['order_id']} was already received"
    assert reasons[5].startswith("malformed feedback_submitted: item_rating: Input should be less than or equal to 5")
    assert paid.status == "paid"


async def test_update_rejects_synchronously_and_applies_good_events(ts_env: WorkflowEnvironment, make_harness):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(
                "apply_event",
                EventEnvelope(event="order_delivered", payload={"delivered_at": "2099-01-01T00:00:00Z"}),
            )
        assert "delivered_at 2099-01-01T00:00:00+00:00 is in the future" in str(rejected.value.cause)
        view = await handle.execute_update(
            "apply_event", EventEnvelope(event="payment_received", payload=payment_for(order)), result_type=OrderStatusView
        )
        assert view.rejected_events == []
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.terminate("test done")
