"""CRM activities: customers, orders and feedback in PostgreSQL."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.consent import record_checkout_consent
from workflows.models import (
    CancelRecord,
    FeedbackRecord,
    JourneySettings,
    OrderInput,
    OrderSetup,
)

UPSERT_CUSTOMER = """
INSERT INTO customers (customer_id, name, email, phone, timezone)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (customer_id) DO UPDATE
SET name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone,
    timezone = EXCLUDED.timezone, updated_at = now()
"""

INSERT_ORDER = """
INSERT INTO orders (order_id, customer_id, seller_id, seller_name, placed_at, currency, total, delivery_method, document)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (order_id) DO NOTHING
RETURNING order_id
"""

INSERT_ITEM = """
INSERT INTO order_items (order_id, line_no, sku, name, category, quantity, unit_price)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

# Rollups read by recommendations. Rows are touched in sku order so that
# concurrent orders sharing products never deadlock.
COUNT_SALES = """
INSERT INTO product_sales AS p (sku, name, category, units_sold)
SELECT sku, min(name), min(category), sum(quantity)
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS i(sku, name, category, quantity)
GROUP BY sku ORDER BY sku
ON CONFLICT (sku) DO UPDATE
SET units_sold = p.units_sold + EXCLUDED.units_sold, name = EXCLUDED.name, category = EXCLUDED.category
"""

COUNT_PAIRS = """
INSERT INTO bought_together AS t (sku, other_sku, orders)
SELECT a, b, 1 FROM unnest($1::text[]) a, unnest($1::text[]) b WHERE a <> b ORDER BY a, b
ON CONFLICT (sku, other_sku) DO UPDATE SET orders = t.orders + 1
"""

# Cancelling takes the order back out of the rollups, once.
CANCEL = """
WITH cancelled AS (
    UPDATE orders SET status = 'cancelled', cancellation_reason = $2
    WHERE order_id = $1 AND status <> 'cancelled'
    RETURNING order_id
),
items AS (
    SELECT sku, sum(quantity) AS quantity FROM order_items
    WHERE order_id IN (SELECT order_id FROM cancelled) GROUP BY sku
),
sales AS (
    UPDATE product_sales p SET units_sold = p.units_sold - items.quantity
    FROM items WHERE p.sku = items.sku
)
UPDATE bought_together t SET orders = t.orders - 1
FROM items a, items b
WHERE a.sku <> b.sku AND t.sku = a.sku AND t.other_sku = b.sku
"""


class OrderActivities:
    def __init__(self, pool: asyncpg.Pool, settings: JourneySettings) -> None:
        self._pool = pool
        self._settings = settings

    @activity.defn
    async def record_order(self, order: OrderInput) -> OrderSetup:
        """Upsert the customer and the consent given at checkout, store the
        order once, and hand the workflow the journey settings it keeps for
        its lifetime. Consent is not handed over: it is read at each send."""
        c = order.customer
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(UPSERT_CUSTOMER, c.customer_id, c.name, c.email, c.phone, c.timezone)
            if c.marketing_consent:
                await record_checkout_consent(conn, c.customer_id, c.marketing_consent)
            inserted = await conn.fetchval(
                INSERT_ORDER,
                order.order_id,
                c.customer_id,
                order.seller.seller_id,
                order.seller.name,
                order.placed_at,
                order.currency,
                order.total,
                order.delivery.method,
                order.model_dump_json(),
            )
            if inserted:
                items = order.items
                await conn.executemany(
                    INSERT_ITEM,
                    [
                        (order.order_id, n, i.sku, i.name, i.category, i.quantity, i.unit_price)
                        for n, i in enumerate(order.items, start=1)
                    ],
                )
                await conn.execute(
                    COUNT_SALES, [i.sku for i in items], [i.name for i in items], [i.category for i in items], [i.quantity for i in items]
                )
                await conn.execute(COUNT_PAIRS, sorted({i.sku for i in items}))
        return OrderSetup(settings=self._settings)

    @activity.defn
    async def cancel_order(self, record: CancelRecord) -> None:
        await self._pool.execute(CANCEL, record.order_id, record.reason)

    @activity.defn
    async def store_feedback(self, record: FeedbackRecord) -> None:
        f = record.feedback
        await self._pool.execute(
            """
            INSERT INTO feedback (order_id, customer_id, seller_id, skus, item_rating, seller_rating, comment)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (order_id) DO NOTHING
            """,
            record.order_id,
            record.customer_id,
            record.seller_id,
            record.skus,
            f.item_rating,
            f.seller_rating,
            f.comment,
        )
