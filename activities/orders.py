"""CRM activities: customers, orders and feedback in PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from activities.consent import record_checkout_consent
from activities.customers import starting_state
from workflows import search_attributes as sa
from workflows.models import (
    CUSTOMER_WORKFLOW_TYPE,
    CancelRecord,
    FeedbackRecord,
    JourneySettings,
    LifecycleSettings,
    OrderFacts,
    OrderInput,
    OrderNews,
    OrderSetup,
    customer_workflow_id,
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

# A coupon from a reward or a win-back, used by this order.
REDEEM_COUPON = """
UPDATE coupons SET redeemed_order_id = $1, redeemed_at = $4
WHERE code = $2 AND customer_id = $3 AND redeemed_order_id IS NULL AND expires_at > $4
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


async def store_order(conn: asyncpg.Connection, order: OrderInput) -> None:
    """The customer, and the order with its checkout consent, once (a retry
    or a replay applies the consent no more: a later unsubscribe stands);
    call in a transaction."""
    c = order.customer
    await conn.execute(UPSERT_CUSTOMER, c.customer_id, c.name, c.email, c.phone, c.timezone)
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
        if c.marketing_consent:
            await record_checkout_consent(conn, c.customer_id, c.marketing_consent, order.order_id, order.placed_at)
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
        if order.coupon_code:
            await conn.execute(REDEEM_COUPON, order.order_id, order.coupon_code, c.customer_id, order.placed_at)


class OrderActivities:
    def __init__(
        self, pool: asyncpg.Pool, settings: JourneySettings, client: Client, lifecycle: LifecycleSettings
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._client = client
        self._lifecycle = lifecycle

    @activity.defn
    async def record_order(self, order: OrderInput) -> OrderSetup:
        """Upsert the customer, store the order and the consent given at its
        checkout once, tell the customer's workflow, and hand the order's
        workflow the journey settings it keeps for its lifetime. Consent is
        not handed over: it is read at each send."""
        c = order.customer
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await store_order(conn, order)
            customer = await starting_state(conn, c.customer_id, self._lifecycle, datetime.now(timezone.utc))
        await self._tell_customer(order, customer.model_dump(mode="json"))
        return OrderSetup(settings=self._settings)

    async def _tell_customer(self, order: OrderInput, starting: dict) -> None:
        """Signal-with-start: one billable action, whether or not the
        customer's workflow runs already. A retry signals again; the
        workflow ignores news of an order it knows."""
        c = order.customer
        news = OrderNews(
            event="placed",
            order=OrderFacts(order_id=order.order_id, placed_at=order.placed_at, total=order.total),
            coupon_code=order.coupon_code,
            timezone=c.timezone,
            has_phone=c.phone is not None,
        )
        await self._client.start_workflow(
            CUSTOMER_WORKFLOW_TYPE,
            starting,
            id=customer_workflow_id(c.customer_id),
            task_queue=activity.info().task_queue,
            start_signal="order_news",
            start_signal_args=[news],
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(sa.CUSTOMER_ID, c.customer_id), SearchAttributePair(sa.CUSTOMER_PHASE, starting["phase"])]
            ),
            static_summary=f"Customer {c.customer_id}",
        )

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
