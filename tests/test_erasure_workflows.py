"""An erased customer's open order sends nothing more and ends, and their
customer workflow ends (time-skipping), told by `customer_erased`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from store import erasure
from tests.conftest import new_order
from tests.fake_providers import FakeProviders
from tests.test_exactly_once import requests_to

# The erasure owes the workflows signals that the test delivers itself.
pytestmark = pytest.mark.usefixtures("no_owed_signals_left")


async def test_an_erased_customer_s_open_order_sends_nothing_more_and_ends_and_so_does_their_journey(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    email = order["customer"]["email"]
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await h.wait_queues_empty(handle)
        sent_before = len(requests_to(fakes, email))
        async with pool.acquire() as conn:
            forgotten = await erasure.forget(conn, order["customer"]["customer_id"], "test")
        for workflow_id in (f"order-{order['order_id']}", f"customer-{order['customer']['customer_id']}"):
            await h.client.get_workflow_handle(workflow_id).signal(erasure.ERASED_SIGNAL, {})
        assert forgotten.new
        result = await h.result(handle)
        customer = h.client.get_workflow_handle(f"customer-{order['customer']['customer_id']}")
        await asyncio.wait_for(customer.result(), 30)
        assert (await customer.describe()).status is WorkflowExecutionStatus.COMPLETED
        # Days later: no payment reminder, no cancellation went out.
        await ts_env.sleep(timedelta(days=4))
    assert result.status == "awaiting_payment"
    assert len(requests_to(fakes, email)) == sent_before
    assert [t.kind for t in result.touchpoints] == ["order_confirmation"]
