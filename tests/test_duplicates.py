"""The same thing twice changes nothing the second time: a duplicate
dispatch, delivery, collection, cancellation or feedback event is recorded
in `status` as rejected with its reason, and no message goes twice (counted
at the fake providers and in the ledger); `orders place` of an order already
placed is the same workflow, with one confirmation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.conftest import TEST_KEY_ENV, Harness, new_order, payment_for
from tests.fake_providers import FakeProviders
from tests.test_journey import kinds, seed_history
from tests.test_promises import order_row_locked, until_a_query_waits_for_a_lock
from workflows.ledger_key import LedgerKey
from workflows.models import TASK_QUEUE, OrderStatusView, workflow_id_for

REPO = Path(__file__).resolve().parent.parent


def idle_with(*expected: tuple[str, str, str]):
    """Every touchpoint expected is recorded, and nothing waits to be sent."""
    return lambda v: not v.queued_messages and all(t in kinds(v) for t in expected)


async def signal_and_settle(h: Harness, handle: WorkflowHandle, event: str, payload: dict[str, Any], *expected) -> None:
    """One event, then its messages sent before the next: a duplicate must
    find the first one's messages gone, not overtake them."""
    await handle.signal(event, payload)
    await h.wait_for(handle, idle_with(*expected))


async def duplicate_rejected(h: Harness, handle: WorkflowHandle, event: str, payload: dict[str, Any], times: int = 1) -> OrderStatusView:
    before = (await handle.query("status", result_type=OrderStatusView)).rejected_total
    for _ in range(times):
        await handle.signal(event, payload)
    return await h.wait_for(handle, lambda v: v.rejected_total == before + times and not v.queued_messages)


async def nothing_sent_twice(pool, fakes: FakeProviders, order: dict[str, Any], view: OrderStatusView) -> None:
    """Each of the order's messages once in its touchpoints, in the ledger
    (one request each) and at the providers."""
    assert all(n == 1 for n in Counter((t.kind, t.channel) for t in view.touchpoints).values()), kinds(view)
    rows = await pool.fetch("SELECT key, state, attempts FROM message_ledger WHERE order_id = $1", order["order_id"])
    keys = {LedgerKey.parse(r["key"]) for r in rows}
    assert {(k.kind, k.channel) for k in keys} == {(t.kind, t.channel) for t in view.touchpoints}
    assert [(r["key"], r["state"], r["attempts"]) for r in rows if (r["state"], r["attempts"]) != ("sent", 1)] == []
    customer = order["customer"]
    accepted = [m.identity for m in list(fakes.accepted) if m.recipient in (customer["email"], customer.get("phone"))]
    assert [i for i, n in Counter(accepted).items() if n > 1] == []
    assert len(accepted) >= len(rows)  # the order's, and the customer's welcome


async def paid(h: Harness, order: dict[str, Any]) -> WorkflowHandle:
    handle = await h.start(order)
    await h.wait_for(handle, idle_with(("order_confirmation", "email", "sent")))
    await signal_and_settle(h, handle, "payment_received", payment_for(order), ("payment_confirmation", "email", "sent"))
    return handle


async def dispatched(h: Harness, order: dict[str, Any]) -> tuple[WorkflowHandle, dict[str, Any]]:
    handle = await paid(h, order)
    dispatch = {"carrier": "DHL", "tracking_number": "DUP1", "expected_delivery": await h.tomorrow()}
    await signal_and_settle(
        h, handle, "order_dispatched", dispatch, ("dispatch_notice", "email", "sent"), ("dispatch_notice", "sms", "sent")
    )
    return handle, dispatch


async def delivered(h: Harness, order: dict[str, Any], **details: Any) -> WorkflowHandle:
    # The journey's last mail recommends from past orders: this test's own,
    # not whatever tests ran before it on this database.
    await seed_history(h.pool, order["items"][0]["sku"])
    handle, _ = await dispatched(h, order)
    delivery = {"delivered_at": await h.now_iso(), **details}
    await signal_and_settle(h, handle, "order_delivered", delivery, ("delivery_confirmation", "email", "sent"))
    return handle


async def test_a_duplicate_dispatch_is_rejected_and_notifies_no_one_again(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle, dispatch = await dispatched(h, order)
        await duplicate_rejected(h, handle, "order_dispatched", dispatch)
        view = await duplicate_rejected(h, handle, "order_dispatched", {**dispatch, "tracking_number": "DUP2"})
    assert [r.reason for r in view.rejected_events] == ["duplicate dispatch", "duplicate dispatch"]
    assert view.status == "dispatched"
    assert len([m for m in fakes.deliveries_to(order["customer"]["email"]) if "tracking number DUP" in m]) == 1
    assert len([m for m in fakes.deliveries_to(order["customer"]["phone"]) if "DHL DUP" in m]) == 1
    await nothing_sent_twice(pool, fakes, order, view)


async def test_a_duplicate_delivery_is_rejected_and_confirms_nothing_again(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await delivered(h, order)
        view = await duplicate_rejected(h, handle, "order_delivered", {"delivered_at": await h.now_iso()}, times=2)
    assert [r.reason for r in view.rejected_events] == ["duplicate delivery", "duplicate delivery"]
    assert view.status == "delivered"
    await nothing_sent_twice(pool, fakes, order, view)


async def test_a_duplicate_collection_is_rejected(ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool):
    order = new_order(delivery={"method": "locker", "locker_id": "WAW-D", "locker_name": "Locker WAW-D"})
    async with make_harness(ts_env) as h:
        handle = await delivered(h, order, locker_pickup_code="4711")
        await handle.signal("parcel_collected", {})
        view = await duplicate_rejected(h, handle, "parcel_collected", {}, times=2)
        result = await h.result(handle)
    assert [r.reason for r in view.rejected_events] == ["duplicate parcel_collected", "duplicate parcel_collected"]
    assert result.status == "completed" and not result.needs_attention
    assert "locker_reminder" not in [k for k, _, _ in kinds(result)]
    await nothing_sent_twice(pool, fakes, order, result)


async def test_a_duplicate_cancellation_is_rejected_while_it_is_carried_out_and_after(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    """The second cancellation comes while the first is being written (its
    database row held), the third once the order is cancelled."""
    order = new_order()
    cancel = {"reason": "changed my mind"}
    async with make_harness(ts_env) as h:
        handle = await paid(h, order)
        async with order_row_locked(pool, order["order_id"]):
            await handle.signal("order_cancelled", cancel)
            await until_a_query_waits_for_a_lock(pool)
            during = await duplicate_rejected(h, handle, "order_cancelled", cancel)
            assert during.status == "paid"
        await h.wait_for(handle, idle_with(("order_cancelled", "email", "sent")))
        view = await duplicate_rejected(h, handle, "order_cancelled", {"reason": "really"})
    assert [r.reason for r in view.rejected_events] == ["duplicate cancellation", "order is already cancelled"]
    assert view.status == "cancelled" and view.cancellation_reason == "changed my mind"
    assert len([m for m in fakes.deliveries_to(order["customer"]["email"]) if "changed my mind" in m]) == 1
    row = await pool.fetchrow("SELECT status, cancellation_reason FROM orders WHERE order_id = $1", order["order_id"])
    assert tuple(row) == ("cancelled", "changed my mind")
    await nothing_sent_twice(pool, fakes, order, view)


async def test_duplicate_feedback_is_rejected_and_the_first_is_kept(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await delivered(h, order)
        await handle.signal("feedback_submitted", {"item_rating": 4, "seller_rating": 5, "comment": "first"})
        view = await duplicate_rejected(h, handle, "feedback_submitted", {"item_rating": 1, "seller_rating": 1, "comment": "again"})
        result = await h.result(handle)
    assert [r.reason for r in view.rejected_events] == ["duplicate feedback"]
    assert result.status == "completed" and not result.needs_attention  # the second's rating of 1 would flag it
    rows = await pool.fetch("SELECT item_rating, seller_rating, comment FROM feedback WHERE order_id = $1", order["order_id"])
    assert [tuple(r) for r in rows] == [(4, 5, "first")]
    assert "feedback_request" not in [k for k, _, _ in kinds(result)]
    await nothing_sent_twice(pool, fakes, order, result)


def orders_place(order_file: Path, temporal_address: str, database_url: str) -> subprocess.CompletedProcess:
    """As a shop's backend runs it: the order's data key goes to PostgreSQL."""
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal_address, "DATABASE_URL": database_url, **TEST_KEY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "starter.cli", "place", str(order_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


async def test_orders_place_of_the_same_order_twice_is_one_workflow_with_one_confirmation(
    dev_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool, tmp_path: Path, database_url: str
):
    order = new_order()
    order_file = tmp_path / "order.json"
    order_file.write_text(json.dumps(order))
    address = dev_env.client.service_client.config.target_host
    async with make_harness(dev_env, task_queue=TASK_QUEUE) as h:
        first = orders_place(order_file, address, database_url)
        assert first.returncode == 0, first.stderr
        handle = h.client.get_workflow_handle(workflow_id_for(order["order_id"]), result_type=OrderStatusView)
        h.started.append(handle)
        await h.wait_for(handle, idle_with(("order_confirmation", "email", "sent")))
        again = orders_place(order_file, address, database_url)
        assert again.returncode == 0, again.stderr
        runs = [r.run_id async for r in h.client.list_workflows(f'WorkflowId="{handle.id}"')]
        view = await h.wait_for(handle, idle_with(("order_confirmation", "email", "sent")))
    assert again.stdout == first.stdout
    assert len(runs) == 1
    assert kinds(view) == [("order_confirmation", "email", "sent")]
    assert len([m for m in fakes.deliveries_to(order["customer"]["email"]) if "confirmed" in m]) == 1
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE order_id = $1", order["order_id"]) == 1
    await nothing_sent_twice(pool, fakes, order, view)
