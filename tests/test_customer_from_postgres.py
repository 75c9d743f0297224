"""A customer's workflow started from PostgreSQL (its first order, or again
after it was terminated) starts where the customer is: their timezone and
phone, the loyalty reward already given, their deliveries."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from temporalio.testing import WorkflowEnvironment

from store.customers import starting_state
from tests.conftest import Harness, new_order, payment_for, store
from tests.test_customer_journey import QUICK, Customer, customer_id, own_clock, sent  # noqa: F401 (a fixture)
from workflows.ledger_key import LedgerKey
from workflows.models import (
    Channel,
    CustomerPhase,
    CustomerState,
    CustomerView,
    DeliveryState,
    LifecycleSettings,
    OrderFacts,
    OrderInput,
    OrderNews,
    OrderSetup,
    Touchpoint,
)

SETTINGS = LifecycleSettings(loyal_after_orders=2)


async def starting(pool, cid: str, settings: LifecycleSettings = SETTINGS) -> CustomerState:
    async with pool.acquire() as conn:
        return await starting_state(conn, cid, settings, datetime.now(timezone.utc))


async def test_item16_7_the_starting_state_knows_the_customers_timezone_and_phone(pool):
    order = new_order()
    order["customer"]["timezone"] = "America/New_York"
    await store(pool, order)
    state = await starting(pool, order["customer"]["customer_id"])
    assert (state.timezone, state.has_phone) == ("America/New_York", True)

    no_phone = new_order()
    del no_phone["customer"]["phone"]
    await store(pool, no_phone)
    assert (await starting(pool, no_phone["customer"]["customer_id"])).has_phone is False


async def test_item16_7_the_loyalty_reward_already_given_counts(pool):
    order = new_order()
    await store(pool, order)
    cid = order["customer"]["customer_id"]
    now = datetime.now(timezone.utc)
    await pool.execute(
        "INSERT INTO coupons (code, customer_id, milestone, discount_percent, issued_at, expires_at) "
        "VALUES ($1, $2, 'loyal', 10, $3::timestamptz, $3::timestamptz + interval '30 days')",
        f"L{cid}", cid, now,
    )
    assert (await starting(pool, cid)).loyalty_rewards == 1


async def test_item16_7_delivered_orders_make_a_loyal_customer_start_loyal(pool):
    first = new_order()
    cid = first["customer"]["customer_id"]
    second = new_order(customer=first["customer"])
    for order in (first, second):
        await store(pool, order)
    delivered_at = datetime.now(timezone.utc) - timedelta(days=2)
    await pool.execute("UPDATE orders SET delivered_at = $2 WHERE customer_id = $1", cid, delivered_at)
    state = await starting(pool, cid)
    assert state.phase is CustomerPhase.LOYAL
    assert {o.order_id: (o.status, o.delivered_at) for o in state.orders.values()} == {
        first["order_id"]: ("delivered", delivered_at),
        second["order_id"]: ("delivered", delivered_at),
    }
    # Three needed: active, with the two deliveries counted towards it.
    assert (await starting(pool, cid, LifecycleSettings(loyal_after_orders=3))).phase is CustomerPhase.ACTIVE


async def deliver(h: Harness, order: dict, delivered_at: str) -> None:
    handle = await h.start(order)
    await handle.signal("payment_received", payment_for(order))
    await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": await h.tomorrow()})
    await h.wait_touchpoint(handle, "dispatch_notice", "sms")
    await h.wait_queues_empty(handle)
    await handle.signal("order_delivered", {"delivered_at": delivered_at})
    await h.wait_touchpoint(handle, "delivery_confirmation")


async def test_item16_7_a_customer_restarted_from_postgresql_is_where_they_were(ts_env: WorkflowEnvironment, make_harness, pool):
    """Two delivered orders made the customer loyal, with a reward. Their
    workflow is terminated; the next order starts it again from PostgreSQL:
    loyal, the reward given, their deliveries, their timezone and phone."""
    first = new_order()
    customer = first["customer"]
    customer["timezone"] = "America/New_York"
    cid = customer["customer_id"]
    async with make_harness(ts_env, lifecycle=SETTINGS) as h:
        c = Customer(h, pool, cid)
        for order in (first, new_order(customer=customer)):
            delivered_at = await h.now_iso()
            await deliver(h, order, delivered_at)
            stored = await pool.fetchval("SELECT delivered_at FROM orders WHERE order_id = $1", order["order_id"])
            assert stored == datetime.fromisoformat(delivered_at)
        view = await c.wait_for(lambda v: v.loyalty_rewards == 1)
        assert view.phase is CustomerPhase.LOYAL
        await c.handle.terminate("an operator's mistake")

        third = new_order(customer=customer)
        await h.start(third)
        view = await c.wait_for(lambda v: v.orders_total == 3)
    assert view.phase is CustomerPhase.LOYAL
    assert (view.loyalty_rewards, view.delivered_in_window) == (1, 2)
    assert (view.timezone, view.has_phone) == ("America/New_York", True)


async def test_item16_7_news_of_an_order_it_started_with_still_tells_the_timezone_and_phone(ts_env, make_harness, pool):
    """A workflow whose starting state has the order but not the customer's
    contact facts (as record_order built it before) learns them from the
    order's news, so the welcome email the customer did not allow goes by
    SMS, which they did."""
    order = new_order()
    order["customer"]["marketing_consent"] = {"email": False, "sms": True}
    cid, oid = order["customer"]["customer_id"], order["order_id"]
    await store(pool, order)
    async with make_harness(ts_env, lifecycle=QUICK) as h:
        now = await h.now()
        facts = OrderFacts(order_id=oid, placed_at=now, total=Decimal("110.00"))
        state = CustomerState(customer_id=cid, settings=QUICK, phase_since=now, orders={oid: facts}, orders_total=1, last_order_at=now)
        c = Customer(h, pool, cid)
        placed = OrderNews(event="placed", order=facts, timezone="Europe/Warsaw", has_phone=True)
        await h.client.start_workflow(
            "CustomerJourney", state.model_dump(mode="json"), id=c.handle.id, task_queue=h.task_queue,
            start_signal="order_news", start_signal_args=[placed.model_dump(mode="json")],
        )
        h.started.append(c.handle)
        await c.deliver(oid, "110.00")
        view = await c.wait_for(lambda v: any(
            LedgerKey.parse(k).kind == "welcome" and LedgerKey.parse(k).channel is Channel.SMS and s is DeliveryState.SENT
            for k, s in v.messages.items()
        ))
    assert (view.timezone, view.has_phone) == ("Europe/Warsaw", True)
    assert isinstance(view, CustomerView)


async def test_item16_7_a_win_back_held_back_by_the_cap_is_superseded_by_a_new_order(own_clock, make_harness, pool, fakes, provider_config):
    """The win-back waits for the marketing cap (the welcome filled it);
    the customer orders meanwhile: it is withdrawn and recorded superseded,
    and never sent, however long the cap holds it."""
    capped = dataclasses.replace(provider_config, marketing_cap=1, marketing_cap_window=timedelta(days=30))
    async with make_harness(own_clock, lifecycle=QUICK, config=capped) as h:
        c = Customer(h, pool, customer_id(holdout=False))
        first = await c.place()
        await c.deliver(first)
        await c.wait_for(lambda v: sent(v, "welcome"))
        await own_clock.sleep(timedelta(hours=1, minutes=5))
        view = await c.wait_for(lambda v: v.phase is CustomerPhase.LAPSED)
        assert view.win_back_group == "treated"
        await c.place()
        view = await c.wait_for(lambda v: any(LedgerKey.parse(k).kind == "win_back" for k in v.messages))
    [(key, state)] = [(k, s) for k, s in view.messages.items() if LedgerKey.parse(k).kind == "win_back"]
    assert state is DeliveryState.SUPERSEDED
    assert view.phase is CustomerPhase.ACTIVE and view.won_back_total == 0
    assert not [m for m in fakes.accepted if m.key == key]


async def test_item16_7_an_order_set_up_before_deliveries_were_stored_stores_its_delivery(
    ts_env: WorkflowEnvironment, make_harness, pool, monkeypatch
):
    """Its record_order ran on a worker before this change (no
    stores_delivery): delivered since, it stores the delivery all the same,
    behind a patch marker."""
    from temporalio import activity
    from temporalio.api.enums.v1 import EventType

    from activities.orders import OrderActivities

    record_order = OrderActivities.record_order

    @activity.defn(name="record_order")
    async def as_before(self, order: OrderInput, first_run_id: str | None = None) -> OrderSetup:
        setup = await record_order(self, order, first_run_id)
        return setup.model_copy(update={"stores_delivery": False})

    monkeypatch.setattr(OrderActivities, "record_order", as_before)
    order = new_order()
    async with make_harness(ts_env) as h:
        delivered_at = await h.now_iso()
        await deliver(h, order, delivered_at)
        handle = h.client.get_workflow_handle(f"order-{order['order_id']}")
        history = await handle.fetch_history()
        await handle.terminate("test done")
    assert await pool.fetchval("SELECT delivered_at FROM orders WHERE order_id = $1", order["order_id"]) == datetime.fromisoformat(delivered_at)
    assert [e.event_type for e in history.events].count(EventType.EVENT_TYPE_MARKER_RECORDED) == 1


async def test_item16_7_orders_delivered_before_migration_013_get_their_delivery_from_the_ledger(pool):
    """The migration's backfill: an order whose delivery confirmation is in
    the ledger was delivered when that was handed to its channel."""
    from importlib import resources

    script = resources.files("store").joinpath("migrations/013_deliveries.sql").read_text()
    backfill = script[script.index("UPDATE orders"):]
    delivered, open_order = new_order(), new_order()
    for order in (delivered, open_order):
        await store(pool, order)
    key = LedgerKey(f"order-{delivered['order_id']}", Touchpoint.DELIVERY_CONFIRMATION, Channel.EMAIL)
    confirmed_at = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    await pool.execute(
        "INSERT INTO message_ledger (key, order_id, kind, channel, recipient, state, created_at) "
        "VALUES ($1, $2, 'delivery_confirmation', 'email', 'x', 'sent', $3)",
        str(key), delivered["order_id"], confirmed_at,
    )
    async with pool.acquire() as conn:
        # Rolled back: other tests' orders are left as they are.
        backfilling = conn.transaction()
        await backfilling.start()
        await conn.execute(backfill)
        stored = dict(await conn.fetch(
            "SELECT order_id, delivered_at FROM orders WHERE order_id = ANY($1)", [delivered["order_id"], open_order["order_id"]]
        ))
        await backfilling.rollback()
    assert stored == {delivered["order_id"]: confirmed_at, open_order["order_id"]: None}
