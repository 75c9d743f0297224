"""A flood of bad events cannot lock an order out of its real ones: the
workflow continues as new, carrying its state, long before the server's
limits (10,000 signals per run on the dev server)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle

from tests.conftest import new_order, payment_for
from workflows.models import JourneySettings, OrderStatusView

FLOOD = 12_000
SERVER_SIGNAL_LIMIT = 10_000
QUICK = JourneySettings(
    feedback_delay=timedelta(seconds=1), recommendations_delay=timedelta(seconds=2), feedback_window=timedelta(seconds=1)
)


async def flood(handle: WorkflowHandle, n: int, in_flight: int = 4) -> None:
    """A backend retrying a bad event in a loop from a few threads. (A flood
    faster than the worker can finish workflow tasks leaves a run no moment
    to hand over: the README says so.)"""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await handle.signal("payment_received", {"payment_id": f"bad-{i}", "amount": "abc", "currency": "EUR"})

    await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.long(35)
async def test_item06_twelve_thousand_bad_signals_then_the_real_events_complete_the_order(dev_env, make_harness):
    order = new_order()
    async with make_harness(dev_env, journey=QUICK) as h:
        started = await h.start(order)
        # Without a run id, every call follows the order into its latest run.
        handle = h.client.get_workflow_handle(started.id, result_type=OrderStatusView)
        await h.wait_touchpoint(handle, "order_confirmation")
        await flood(handle, FLOOD)
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "F1", "expected_delivery": await h.tomorrow()})
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        result = await h.result(handle, timeout=120)
        first_run = h.client.get_workflow_handle(started.id, run_id=started.first_execution_run_id)
        await h.keep_history(first_run, "continued_as_new")  # up to its hand-over
        await h.keep_history(handle, "continued_run")  # from the carried state to the end
        runs = [run async for run in h.client.list_workflows(f'WorkflowId="{started.id}"')]
        lengths = [len((await h.client.get_workflow_handle(started.id, run_id=r.run_id).fetch_history()).events) for r in runs]
    assert result.status == "completed" and not result.needs_attention
    assert result.rejected_total == FLOOD
    assert len(result.rejected_events) == 50
    assert [t.kind.value for t in result.touchpoints if t.channel == "email"] == [
        "order_confirmation", "payment_confirmation", "dispatch_notice", "delivery_confirmation",
        "feedback_request", "recommendations",
    ]
    assert len(runs) >= 3, lengths
    assert max(lengths) < SERVER_SIGNAL_LIMIT, lengths


def test_a_state_carried_over_by_a_run_before_the_lanes_were_one_object_keeps_its_messages():
    """Runs before workflows/lanes.py kept an order's queues and settling
    mails at the top of its state, and a customer's messages in one
    `outbox`: the next run finds each in its lane."""
    from workflows.models import Channel, CustomerState, JourneyState, LifecycleSettings, OrderInput

    mail = {"kind": "order_confirmation", "channel": "email", "queued_at": "2026-11-23T10:00:00Z"}
    sms = {"kind": "dispatch_notice", "channel": "sms", "queued_at": "2026-11-23T10:00:00Z"}
    in_doubt = {**mail, "settle_at": "2026-11-23T10:05:00Z"}
    order = JourneyState.model_validate(
        {
            "order": OrderInput.model_validate(new_order()).model_dump(mode="json"),
            "started_at": "2026-11-23T10:00:00Z",
            "queues": {"email": [mail], "sms": [sms]},
            "settling": [in_doubt],
        }
    )
    assert [m.kind.value for m in order.lanes.queues[Channel.EMAIL]] == ["order_confirmation"]
    assert [m.kind.value for m in order.lanes.queues[Channel.SMS]] == ["dispatch_notice"]
    assert [m.settle_at.minute for m in order.lanes.settling] == [5]
    welcome = {"kind": "welcome", "channel": "email", "occasion": "first-order", "queued_at": "2026-11-23T10:00:00Z"}
    handed_over = {**welcome, "channel": "sms"}
    customer = CustomerState.model_validate(
        {"customer_id": "C1", "settings": LifecycleSettings().model_dump(mode="json"), "outbox": [handed_over, welcome]}
    )
    assert [m.channel for m in customer.lanes.queued] == [Channel.EMAIL, Channel.SMS]
    assert customer.lanes.settling == []
    # What a run carries over now loads as it is.
    assert JourneyState.model_validate(order.model_dump(mode="json")) == order
    assert CustomerState.model_validate(customer.model_dump(mode="json")) == customer
