"""Carriers' feeds arrive out of order: an event that comes before the one
it follows is held and applied when that one comes, a delivery after the
payment implies the dispatch, and a held event the order can no longer take
is refused with the reason. On the time-skipping server."""

from __future__ import annotations

from datetime import timedelta

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Harness, new_order, payment_for
from workflows.models import EventEnvelope, OrderStatusView


def kinds(view: OrderStatusView) -> set[str]:
    return {t.kind.value for t in view.touchpoints}


def held(view: OrderStatusView) -> list[tuple[str, str]]:
    return [(h.event, h.until) for h in view.held_events]


async def details(handle: WorkflowHandle) -> str:
    """The Web UI's summary of the order: its current details, which the Web
    UI reads through this built-in query."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def dispatch(h: Harness) -> dict:
    return {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": await h.tomorrow()}


async def test_item16_6_a_delivery_before_its_dispatch_delivers_the_order_and_nothing_is_lost(
    ts_env: WorkflowEnvironment, make_harness
):
    """The carrier's "delivered" overtakes its "dispatched": the order is
    delivered at once, "on its way" is never sent, and the late dispatch
    is refused; nobody is told 14 days later that the parcel is lost."""
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await handle.signal("order_dispatched", await dispatch(h))
        await ts_env.sleep(timedelta(days=3, hours=1))
        await h.wait_touchpoint(handle, "feedback_request")
        result = await h.result(handle)
    assert result.status == "completed" and not result.needs_attention
    assert {"dispatch_notice", "delivery_delayed", "parcel_lost"}.isdisjoint(kinds(result))
    assert [(r.event, r.reason) for r in result.rejected_events] == [
        ("order_dispatched", "out of order: dispatched after the delivery")
    ]


async def test_item16_6_a_collection_before_its_delivery_is_held_shown_and_applied_then(
    ts_env: WorkflowEnvironment, make_harness
):
    """Held while the delivery is not in, in `status` and the Web UI's
    details; the delivery applies it: no locker reminder, no flag."""
    order = new_order(delivery={"method": "locker", "locker_id": "WAW-42"})
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("order_dispatched", await dispatch(h))
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await h.wait_queues_empty(handle)
        await handle.signal("parcel_collected", {})
        view = await h.wait_for(handle, lambda v: v.held_events or v.rejected_events)
        assert held(view) == [("parcel_collected", "order_delivered")] and view.rejected_events == []
        assert "- held until order_delivered: parcel_collected (came " in await details(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso(), "locker_pickup_code": "123"})
        view = await h.wait_for(handle, lambda v: not v.held_events)
        assert view.status == "delivered"
        result = await h.result(handle)
        await h.keep_history(handle, "early_events_held")
    assert result.status == "completed"
    assert "locker_reminder" not in kinds(result)
    assert not result.needs_attention and result.rejected_events == []


async def test_item16_6_a_delivery_before_payment_is_held_then_applied_by_the_payment(
    ts_env: WorkflowEnvironment, make_harness
):
    """Through the `apply_event` update too: the caller sees it held."""
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        view = await handle.execute_update(
            "apply_event",
            EventEnvelope(event="order_delivered", payload={"delivered_at": await h.now_iso()}),
            result_type=OrderStatusView,
        )
        assert held(view) == [("order_delivered", "payment_received")] and view.status == "awaiting_payment"
        await handle.signal("payment_received", payment_for(order))
        view = await h.wait_touchpoint(handle, "delivery_confirmation")
        await handle.terminate("test done")
    assert view.held_events == [] and view.rejected_events == []
    assert "dispatch_notice" not in kinds(view)


async def test_item16_6_an_event_held_when_the_order_is_cancelled_is_refused_with_the_reason(
    ts_env: WorkflowEnvironment, make_harness
):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("order_dispatched", await dispatch(h))
        await h.wait_for(handle, lambda v: v.held_events or v.rejected_events)
        result = await h.result(handle)
    assert result.status == "cancelled" and result.held_events == []
    assert [(r.event, r.reason) for r in result.rejected_events] == [
        ("order_dispatched", "order is being cancelled: payment not received within 72 hours")
    ]
