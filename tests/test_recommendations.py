"""Recommendations: bought together first, then best sellers in the basket's
categories; never what the customer owns; cancelled orders do not count."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from activities.orders import OrderActivities
from store.recommendations import recommend
from tests.conftest import store
from workflows.models import CancelRecord, JourneySettings, LifecycleSettings, OrderInput


def order(order_id: str, customer: str, lines: list[tuple[str, str, int]]) -> OrderInput:
    return OrderInput.model_validate(
        {
            "order_id": order_id,
            "placed_at": datetime.now(timezone.utc).isoformat(),
            "currency": "EUR",
            "customer": {"customer_id": customer, "name": "R", "email": f"{customer}@example.com"},
            "items": [{"sku": s, "name": f"Product {s}", "quantity": q, "unit_price": "5.00", "category": c} for s, c, q in lines],
            "delivery": {"method": "locker", "locker_id": "L1"},
            "seller": {"seller_id": "S1", "name": "Shop"},
        }
    )


async def test_together_first_then_best_sellers_without_owned_or_cancelled(pool):
    run = uuid.uuid4().hex[:8]
    cat, other_cat = f"kb-{run}", f"audio-{run}"
    a, b, c, d, e, f, h = (f"{x}-{run}" for x in "ABCDEFH")
    orders = OrderActivities(pool, JourneySettings(), None, LifecycleSettings())  # no workflows here
    for n, lines in enumerate(
        [
            [(a, cat, 1), (b, cat, 1)],
            [(a, cat, 1), (b, cat, 1)],
            [(a, cat, 1), (c, cat, 1)],
            [(a, cat, 1), (d, cat, 9)],  # cancelled below
            [(e, cat, 5)],
            [(f, cat, 1)],
            [(h, other_cat, 50)],  # another category
        ]
    ):
        await store(pool, order(f"o{n}-{run}", f"someone-{run}-{n}", lines))
    await orders.cancel_order(CancelRecord(order_id=f"o3-{run}", reason="changed mind"))
    await orders.cancel_order(CancelRecord(order_id=f"o3-{run}", reason="cancelled twice counts once"))

    customer = f"buyer-{run}"
    await store(pool, order(f"old-{run}", customer, [(c, cat, 1)]))
    await store(pool, order(f"new-{run}", customer, [(a, cat, 1)]))

    picks = await recommend(pool, customer, [a], [cat])
    assert [p["sku"] for p in picks] == [b, e, f]
    assert picks[0] == {"sku": b, "name": f"Product {b}", "category": cat}
    sold = await pool.fetchval("SELECT units_sold FROM product_sales WHERE sku = $1", d)
    assert sold == 0
