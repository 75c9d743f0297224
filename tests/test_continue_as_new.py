"""A flood of bad events cannot lock an order out of its real ones: the
workflow continues as new, carrying its state, long before the server's
limits (10,000 signals per run on the dev server)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

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
