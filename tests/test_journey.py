"""Days-long journeys on the time-skipping server."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from bench.actions import billable_actions

from tests.conftest import new_order, payment_for, store
from tests.fake_providers import FakeProviders
from workflows.models import OrderStatusView


def kinds(view: OrderStatusView) -> list[tuple[str, str, str]]:
    return [(t.kind.value, t.channel.value, t.state.value) for t in view.touchpoints]


async def seed_history(pool, sku: str) -> None:
    """Past orders: MOUSE-1 is often bought with PAD-1, and with the customer's own keyboard."""
    for extra in ["PAD-1", "PAD-1", "CABLE-1", sku]:
        past = new_order(items=[
            {"sku": "MOUSE-1", "name": "Mouse", "quantity": 1, "unit_price": "1", "category": "mice"},
            {"sku": extra, "name": extra, "quantity": 1, "unit_price": "1", "category": "mice"},
        ])
        await store(pool, past)


async def test_happy_path_sends_every_touchpoint(ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool):
    order = new_order()
    await seed_history(pool, order["items"][0]["sku"])
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal(
            "order_dispatched", {"carrier": "DHL", "tracking_number": "TRK1", "expected_delivery": await h.tomorrow()}
        )
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await handle.signal("out_for_delivery", {"date": await h.tomorrow()})
        await h.wait_touchpoint(handle, "delivery_day", "sms")
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await ts_env.sleep(timedelta(days=3, hours=1))
        await h.wait_touchpoint(handle, "feedback_request")
        await handle.signal("feedback_submitted", {"item_rating": 5, "seller_rating": 4, "comment": "great <3"})
        result = await h.result(handle)
        await h.keep_history(handle, "happy_path")
        actions = billable_actions(await handle.fetch_history())

    assert result.status == "completed"
    assert not result.needs_attention
    # The README's figure: 26 billed actions as `orders place` starts it, one
    # upsert more here, started without search attributes. No polling, no retries.
    assert actions == {"start": 1, "signal": 5, "activity_attempt": 11, "timer": 5, "search_attribute_upsert": 5}
    # Channels go in parallel; each keeps journey order.
    by_channel = {c: [(k, state) for k, ch, state in kinds(result) if ch == c] for c in ("email", "sms")}
    assert by_channel == {
        "email": [
            ("order_confirmation", "sent"),
            ("payment_confirmation", "sent"),
            ("dispatch_notice", "sent"),
            ("delivery_confirmation", "sent"),
            ("feedback_request", "sent"),
            ("recommendations", "sent"),
        ],
        "sms": [("dispatch_notice", "sent"), ("delivery_day", "sent")],
    }
    assert all(t.provider_message_id for t in result.touchpoints)
    email = order["customer"]["email"]
    mails = fakes.deliveries_to(email)
    # The order's six, and the customer's welcome after the first delivery.
    assert len(mails) == 7
    assert "TRK1" in mails[2] and "DHL" in mails[2]
    # Co-purchased first, then best sellers in the category; never what they bought.
    recs = next(m for m in mails if "PAD-1" in m)
    assert "PAD-1" in recs and "CABLE-1" in recs
    assert order["items"][0]["sku"] not in recs and "Mouse (" not in recs
    feedback = await pool.fetchrow("SELECT * FROM feedback WHERE order_id = $1", order["order_id"])
    assert (feedback["item_rating"], feedback["seller_rating"], feedback["comment"]) == (5, 4, "great <3")
    stored = await pool.fetchval("SELECT count(*) FROM order_items WHERE order_id = $1", order["order_id"])
    assert stored == 2
