"""Every wait has a deadline: reminders, cancellations, apologies and flags.

None of these is about a message overtaken by the journey: each event waits
until the messages of the one before are sent, as it could otherwise overtake
a send completing at that moment, which the time-skipping server cannot take
(see Harness.wait_queues_empty)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from tests.conftest import new_order, payment_for
from tests.test_journey import kinds
from workflows import search_attributes


async def test_unpaid_order_is_reminded_then_cancelled(ts_env: WorkflowEnvironment, make_harness, pool):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await ts_env.sleep(timedelta(hours=25))
        await h.wait_touchpoint(handle, "payment_reminder")
        result = await h.result(handle)
        await h.keep_history(handle, "payment_timeout")
    assert result.status == "cancelled"
    assert result.cancellation_reason == "payment not received within 72 hours"
    assert [k for k, _, _ in kinds(result)] == ["order_confirmation", "payment_reminder", "order_cancelled"]
    row = await pool.fetchrow("SELECT status, cancellation_reason FROM orders WHERE order_id = $1", order["order_id"])
    assert tuple(row) == ("cancelled", "payment not received within 72 hours")


async def test_cancellation_before_dispatch_is_honoured(ts_env: WorkflowEnvironment, make_harness, fakes):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_cancelled", {"reason": "customer changed their mind"})
        result = await h.result(handle)
        await h.keep_history(handle, "cancelled")
    assert result.status == "cancelled"
    assert result.cancellation_reason == "customer changed their mind"
    assert "customer changed their mind" in fakes.deliveries_to(order["customer"]["email"])[-1]


async def test_cancellation_after_dispatch_is_rejected(ts_env: WorkflowEnvironment, make_harness):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "UPS", "tracking_number": "1Z", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice")
        await handle.signal("order_cancelled", {"reason": "too late"})
        view = await h.wait_for(handle, lambda v: v.rejected_events)
        await handle.terminate("test done")
    assert view.status == "dispatched"
    assert view.rejected_events[0].event == "order_cancelled"
    assert view.rejected_events[0].reason == "cannot cancel: the order has already been dispatched"


async def test_late_dispatch_apologises_and_flags(ts_env: WorkflowEnvironment, make_harness):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await ts_env.sleep(timedelta(hours=49))
        view = await h.wait_touchpoint(handle, "dispatch_delayed")
        assert view.needs_attention and view.attention_reasons == ["dispatch_late"]
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(search_attributes.NEEDS_ATTENTION) is True
        # Dispatch still goes through after the apology.
        await handle.signal("order_dispatched", {"carrier": "UPS", "tracking_number": "1Z", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice")
        await handle.terminate("test done")
        await h.keep_history(handle, "late_dispatch")


async def test_late_delivery_sends_delay_notice(ts_env: WorkflowEnvironment, make_harness, fakes):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "GLS", "tracking_number": "G1", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice")
        # End of tomorrow in Warsaw plus one day of grace.
        await ts_env.sleep(timedelta(days=3, hours=2))
        view = await h.wait_touchpoint(handle, "delivery_delayed")
        assert "delivery_late" in view.attention_reasons
        await h.wait_queues_empty(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await handle.terminate("test done")
    # The dispatch notice and the delay notice carry the tracking number; the
    # delivery confirmation and the customer's welcome do not.
    assert sum("tracking number G1" in mail for mail in fakes.deliveries_to(order["customer"]["email"])) == 2


async def test_locker_reminder_when_not_collected(ts_env: WorkflowEnvironment, make_harness, fakes):
    order = new_order(delivery={"method": "locker", "locker_id": "WAW-42", "locker_name": "Locker WAW-42"})
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "InPost", "tracking_number": "IP1", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await h.wait_queues_empty(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        view = await h.wait_for(handle, lambda v: v.rejected_events)
        assert view.rejected_events[0].reason == "locker delivery needs locker_pickup_code"
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso(), "locker_pickup_code": "731904"})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await ts_env.sleep(timedelta(hours=49))
        view = await h.wait_touchpoint(handle, "locker_reminder", "sms")
        await handle.terminate("test done")
        await h.keep_history(handle, "locker_reminder")
    # The customer's welcome mail may come after the delivery confirmation.
    assert any("731904" in mail and "Locker WAW-42" in mail for mail in fakes.deliveries_to(order["customer"]["email"]))
    assert "Locker WAW-42" in fakes.deliveries_to(order["customer"]["phone"])[-1]


async def test_collected_locker_parcel_gets_no_reminder(ts_env: WorkflowEnvironment, make_harness):
    order = new_order(delivery={"method": "locker", "locker_id": "WAW-7"})
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "InPost", "tracking_number": "IP2", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await h.wait_queues_empty(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso(), "locker_pickup_code": "1111"})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await handle.signal("parcel_collected", {})
        result = await h.result(handle)
    assert result.status == "completed"
    assert "locker_reminder" not in [k for k, _, _ in kinds(result)]
    assert not result.needs_attention


async def test_delivery_day_notice_only_for_sellers_that_send_it(ts_env: WorkflowEnvironment, make_harness):
    order = new_order(seller={"seller_id": "S2", "name": "Quiet Shop", "sends_delivery_day_notice": False})
    order["customer"].pop("phone")
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DPD", "tracking_number": "D1", "expected_delivery": await h.tomorrow()})
        await handle.signal("out_for_delivery", {"date": await h.tomorrow()})
        await h.wait_for(handle, lambda v: v.status == "out_for_delivery")
        await h.wait_queues_empty(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        result = await h.result(handle)
    sent = [k for k, _, _ in kinds(result)]
    assert "delivery_day" not in sent
    # No phone: the dispatch notice goes by email only.
    assert [c for k, c, _ in kinds(result) if k == "dispatch_notice"] == ["email"]


async def test_delivery_day_notice_falls_back_to_email_without_phone(ts_env: WorkflowEnvironment, make_harness):
    order = new_order()
    order["customer"].pop("phone")
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DPD", "tracking_number": "D2", "expected_delivery": await h.tomorrow()})
        await handle.signal("out_for_delivery", {"date": await h.tomorrow()})
        view = await h.wait_touchpoint(handle, "delivery_day", "email")
        await handle.terminate("test done")
    assert view.status == "out_for_delivery"


async def test_feedback_window_closes_and_the_order_completes_without_feedback(ts_env: WorkflowEnvironment, make_harness, pool):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DPD", "tracking_number": "FW1", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await h.wait_queues_empty(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        result = await h.result(handle)
        await h.keep_history(handle, "feedback_window_expired")
    assert result.status == "completed" and not result.needs_attention
    assert [k for k, _, _ in kinds(result)][-2:] == ["feedback_request", "recommendations"]
    assert await pool.fetchval("SELECT count(*) FROM feedback WHERE order_id = $1", order["order_id"]) == 0
