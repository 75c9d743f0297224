"""One order, one journey: a finished order's id started again (the server's
default id-reuse policy, a backend replaying "order created" after an offset
reset) ends at once, sending nothing and changing nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from starter.cli import UsageError, place_order
from store.orders import store_order
from tests.conftest import new_order, payment_for, store
from tests.test_exactly_once import logging_statements
from tests.fake_providers import FakeProviders
from workflows import search_attributes as sa
from workflows.ledger_key import LedgerKey
from workflows.models import Channel, OrderInput, Touchpoint, workflow_id_for


async def what_postgres_holds(pool: asyncpg.Pool, order: dict[str, Any]) -> dict[str, Any]:
    """Everything a run of the order may write, as rows (the customer's own
    workflow, told nothing, goes its way: its phases are its own)."""
    cid, skus = order["customer"]["customer_id"], [i["sku"] for i in order["items"]]
    queries = {
        "order": ("SELECT * FROM orders WHERE order_id = $1", order["order_id"]),
        "items": ("SELECT * FROM order_items WHERE order_id = $1 ORDER BY line_no", order["order_id"]),
        "sales": ("SELECT * FROM product_sales WHERE sku = ANY($1) ORDER BY sku", skus),
        "pairs": ("SELECT * FROM bought_together WHERE sku = ANY($1) ORDER BY sku, other_sku", skus),
        "customer": ("SELECT * FROM customers WHERE customer_id = $1", cid),
        "consent": ("SELECT * FROM consent_audit WHERE customer_id = $1 ORDER BY id", cid),
        "ledger": ("SELECT key, state, updated_at FROM message_ledger WHERE order_id = $1 ORDER BY key", order["order_id"]),
    }
    return {name: [dict(r) for r in await pool.fetch(sql, arg)] for name, (sql, arg) in queries.items()}


def messages_of(fakes: FakeProviders, order: dict[str, Any]) -> list[str]:
    """What the providers took for the order: its mails by ledger key, and
    every SMS to the customer (the customer's own mails go on: their
    workflow lapses while the clock skips)."""
    prefix = LedgerKey.order_prefix(order["order_id"])
    mails = [m.key for m in fakes.accepted if m.key and m.key.startswith(prefix)]
    return mails + fakes.deliveries_to(order["customer"]["phone"])


async def signals_to(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in history.events)


async def test_item16_5_a_second_run_of_a_finished_order_ends_at_once_and_changes_nothing(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    customer = order["customer"]
    async with make_harness(ts_env) as h:
        first = await h.start(order)
        await first.signal("payment_received", payment_for(order))
        await first.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(first, "dispatch_notice", "sms")
        await h.wait_queues_empty(first)
        await first.signal("order_delivered", {"delivered_at": await h.now_iso()})
        assert (await h.result(first)).status == "completed"
        # An ordinary order calls no workflow.patched: no marker, no TemporalChangeVersion upsert.
        assert EventType.EVENT_TYPE_MARKER_RECORDED not in [e.event_type for e in (await first.fetch_history()).events]
        before = await what_postgres_holds(pool, order)
        sent_before = messages_of(fakes, order)
        customers_workflow = h.client.get_workflow_handle(f"customer-{customer['customer_id']}")
        told_before = await signals_to(customers_workflow)

        # As `temporal workflow start` does without --id-reuse-policy.
        again = await h.start(order)
        result = await h.result(again, timeout=30)
        history = await again.fetch_history()

        assert result.status == "duplicate"
        assert result.rejection_reason == (
            f"order {order['order_id']} is already recorded by run {first.first_execution_run_id}: "
            "this second run ends without sending or changing anything"
        )
        assert not result.needs_attention and result.touchpoints == []
        types = [e.event_type for e in history.events]
        assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1  # record_order, which found it recorded
        assert EventType.EVENT_TYPE_TIMER_STARTED not in types
        assert await what_postgres_holds(pool, order) == before
        assert messages_of(fakes, order) == sent_before
        assert await signals_to(customers_workflow) == told_before
        described = await again.describe()
        assert described.typed_search_attributes.get(sa.ORDER_STATUS) == "duplicate"


async def test_item16_5_a_terminated_order_started_again_is_a_second_run_too(ts_env: WorkflowEnvironment, make_harness, fakes):
    """The order is recorded, its confirmation sent: a new start is a second
    journey whatever ended the first. An order's workflow ended by mistake
    is reset instead (tests/test_sending.py), which goes on as the same run."""
    order = new_order()
    async with make_harness(ts_env) as h:
        first = await h.start(order)
        await h.wait_touchpoint(first, "order_confirmation")
        await first.terminate("simulate a lost workflow")
        result = await h.result(await h.start(order))
    assert result.status == "duplicate"
    assert len(fakes.deliveries_to(order["customer"]["email"])) == 1


async def record(pool: asyncpg.Pool, order: dict[str, Any], run_id: str | None) -> str | None:
    async with pool.acquire() as conn, conn.transaction():
        return await store_order(conn, OrderInput.model_validate(order), run_id)


async def test_item16_5_only_the_run_that_recorded_an_order_first_goes_on(pool):
    order = new_order(marketing_consent=None)
    assert await record(pool, order, "run-1") is None
    assert await pool.fetchval("SELECT first_run_id FROM orders WHERE order_id = $1", order["order_id"]) == "run-1"
    # Its own record_order retried: it goes on.
    assert await record(pool, order, "run-1") is None
    before = await what_postgres_holds(pool, order)
    # A second run, with the customer's details as a replayed "order created" had them.
    replayed = {**order, "customer": {**order["customer"], "name": "Old Name", "marketing_consent": {"email": True}}}
    assert await record(pool, replayed, "run-2") == "run run-1"
    assert await what_postgres_holds(pool, order) == before


async def test_item16_5_an_order_recorded_before_run_ids_were_kept(pool):
    """Recorded by a worker before migration 012: no run id. Its own run's
    record_order, retried across the upgrade, has sent nothing yet and claims
    it; a run that finds a message of the order in the ledger is a second one."""
    retried = new_order()
    await store(pool, retried)
    assert await record(pool, retried, "run-1") is None
    assert await pool.fetchval("SELECT first_run_id FROM orders WHERE order_id = $1", retried["order_id"]) == "run-1"

    finished = new_order()
    await store(pool, finished)
    key = LedgerKey(workflow_id_for(finished["order_id"]), Touchpoint.ORDER_CONFIRMATION, Channel.EMAIL)
    await pool.execute(
        "INSERT INTO message_ledger (key, order_id, kind, channel, recipient, state) VALUES ($1, $2, $3, 'email', 'x', 'sent')",
        str(key), finished["order_id"], Touchpoint.ORDER_CONFIRMATION.value,
    )
    before = await what_postgres_holds(pool, finished)
    assert await record(pool, finished, "run-2") == "an earlier run"
    assert await what_postgres_holds(pool, finished) == before


async def test_item16_5_orders_place_does_not_start_a_finished_order_again(ts_env: WorkflowEnvironment):
    """`orders place` starts with RejectDuplicate: a closed order's id is
    refused with a clear message, and no run is started."""
    order = new_order(order_id=f"A{uuid.uuid4().hex[:10]}")
    client = ts_env.client
    workflow_id = await place_order(client, order)
    handle = client.get_workflow_handle(workflow_id)
    first_run = (await handle.describe()).run_id
    # Placing it while it runs is the same workflow.
    assert await place_order(client, order) == workflow_id
    await handle.terminate("the journey is over")
    with pytest.raises(UsageError) as refused:
        await place_order(client, order)
    assert str(refused.value) == (
        f"order {order['order_id']} has already been through its journey (workflow {workflow_id} is closed): not started again"
    )
    assert (await handle.describe()).run_id == first_run


async def test_item16_5_of_two_runs_recording_the_order_at_once_only_the_first_goes_on(pool):
    """A terminated run's record_order still running as a new run records the
    same order: the second waits for the first, then finds it recorded."""
    order = new_order(marketing_consent=None)
    replayed = {**order, "customer": {**order["customer"], "name": "Old Name"}}
    async with pool.acquire() as first, pool.acquire() as second:
        first_tx = first.transaction()
        await first_tx.start()
        assert await store_order(first, OrderInput.model_validate(order), "run-1") is None

        async def record_second() -> str | None:
            async with second.transaction():
                return await store_order(second, OrderInput.model_validate(replayed), "run-2")

        recording = asyncio.create_task(record_second())
        await asyncio.sleep(0.5)  # the second is under way, its transaction open
        await first_tx.commit()
        assert await recording == "run run-1"
    assert await pool.fetchval("SELECT first_run_id FROM orders WHERE order_id = $1", order["order_id"]) == "run-1"
    assert await pool.fetchval("SELECT name FROM customers WHERE customer_id = $1", order["customer"]["customer_id"]) == order["customer"]["name"]


async def test_a_new_order_is_recorded_in_one_statement_after_its_lock_and_the_look_for_an_earlier_run(database_url):
    """The customer, the order, its items, the recommendations' rollups and
    its coupon: one round trip, not six (its checkout consent apart)."""
    async with logging_statements(database_url) as (logging_pool, statements):
        for _ in range(2):  # the first teaches asyncpg the types
            statements.clear()
            async with logging_pool.acquire() as conn, conn.transaction():
                assert await store_order(conn, OrderInput.model_validate(new_order()), "run-1") is None
    # BEGIN, the lock, the look for an earlier run, the recording, the checkout consent, COMMIT.
    assert len(statements) == 6, "\n---\n".join(statements)


async def test_an_order_waiting_for_its_customer_s_row_holds_no_product_s_rollup(pool):
    """The customer's row is written first: an order held up by it (an
    erasure under way, another order of theirs) has not yet locked the rows
    of the recommendations' rollups, so other customers' orders of the same
    products go on meanwhile."""
    waiting_order, other_order = new_order(), new_order()
    other_order["items"] = waiting_order["items"]
    cid = waiting_order["customer"]["customer_id"]
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO customers (customer_id, name, email, timezone) VALUES ($1, 'x', 'x@example.com', 'UTC')", cid)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", cid)

        async def record(order: dict[str, Any]) -> str | None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '2s'")
                return await store_order(conn, OrderInput.model_validate(order), "run-1")

        waiting = asyncio.create_task(record(waiting_order))
        await asyncio.sleep(0.3)  # it waits for the customer's row
        assert not waiting.done()
        assert await record(other_order) is None
    assert await waiting is None
