"""Orders in PostgreSQL: each recorded once, by its first run, with its
customer, the consent given at its checkout and the rollups recommendations
read (store/recommendations.py); then cancelled, delivered and reviewed."""

from __future__ import annotations

import asyncpg

from store.consent import record_checkout_consent
from workflows.models import CancelRecord, DeliveryRecord, FeedbackRecord, OrderInput, PickupMissedRecord, customer_workflow_id

UPSERT_CUSTOMER = """
INSERT INTO customers (customer_id, name, email, phone, timezone)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (customer_id) DO UPDATE
SET name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone,
    timezone = EXCLUDED.timezone, updated_at = now(), erased_at = NULL
-- A customer erased (store/erasure.py) who places a new order is recorded
-- anew; a retried recording of an order from before the erasure is not.
WHERE customers.erased_at IS NULL OR $6
"""

# An erased customer who returns: their customer workflow, whose data key was
# shredded (codec/data_keys.py), may start anew under a new one.
REVIVE_CUSTOMER_WORKFLOW = "DELETE FROM data_keys WHERE workflow_hash = workflow_id_hash($1) AND wrapped_key IS NULL"

INSERT_ORDER = """
INSERT INTO orders (order_id, customer_id, seller_id, seller_name, placed_at, currency, total, delivery_method, document,
                    first_run_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (order_id) DO NOTHING
RETURNING order_id
"""

# Held until the recording transaction ends.
LOCK_ORDER = "SELECT pg_advisory_xact_lock(hashtext('order:' || $1))"

# Who recorded the order, and whether a run of it got as far as a message.
RECORDED_BY = """
SELECT first_run_id, EXISTS (SELECT 1 FROM message_ledger l WHERE l.order_id = o.order_id) AS messaged
FROM orders o WHERE order_id = $1
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


async def store_order(conn: asyncpg.Connection, order: OrderInput, run_id: str | None = None) -> str | None:
    """The customer, and the order with its checkout consent, once (a retry
    or a replay applies the consent no more: a later unsubscribe stands), as
    recorded by `run_id` (the order's first run); call in a transaction.

    An order another run recorded first is left as it is, customer and all:
    that run is named ("run <id>", or "an earlier run" for an order recorded
    before run ids were kept whose messages began), and this one must end."""
    # Two runs recording the order at once (a terminated run's activity still
    # running as a new run starts): the second waits, then finds it recorded.
    await conn.execute(LOCK_ORDER, order.order_id)
    recorded = await conn.fetchrow(RECORDED_BY, order.order_id)
    if recorded is not None and recorded["first_run_id"] != run_id:
        if recorded["first_run_id"] is not None:
            return f"run {recorded['first_run_id']}"
        if recorded["messaged"]:
            return "an earlier run"
        # Recorded before run ids were kept, and no message yet: its own
        # run's record_order, retried across the upgrade.
        await conn.execute("UPDATE orders SET first_run_id = $2 WHERE order_id = $1", order.order_id, run_id)
    c = order.customer
    await conn.execute(UPSERT_CUSTOMER, c.customer_id, c.name, c.email, c.phone, c.timezone, recorded is None)
    if recorded is None:
        await conn.execute(REVIVE_CUSTOMER_WORKFLOW, customer_workflow_id(c.customer_id))
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
        run_id,
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
    return None


async def cancel_order(conn: asyncpg.Connection | asyncpg.Pool, record: CancelRecord) -> None:
    await conn.execute(CANCEL, record.order_id, record.reason)


async def record_delivery(conn: asyncpg.Connection | asyncpg.Pool, record: DeliveryRecord) -> None:
    """When the order was delivered, once, for the customer's starting state
    (store/customers.py), and when it was paid and dispatched (reports/)."""
    await conn.execute(
        """
        UPDATE orders SET delivered_at = coalesce(delivered_at, $2), paid_at = coalesce(paid_at, $3),
                          dispatched_at = coalesce(dispatched_at, $4)
        WHERE order_id = $1
        """,
        record.order_id,
        record.delivered_at,
        record.paid_at,
        record.dispatched_at,
    )


async def record_pickup_missed(conn: asyncpg.Connection | asyncpg.Pool, record: PickupMissedRecord) -> None:
    await conn.execute(
        "UPDATE orders SET pickup_missed_at = coalesce(pickup_missed_at, $2) WHERE order_id = $1", record.order_id, record.missed_at
    )


async def store_feedback(conn: asyncpg.Connection, record: FeedbackRecord) -> None:
    """The feedback and each item's stars, once per order: the order's
    workflow stores what it took, the feedback page what it was given."""
    f = record.feedback
    stars = {sku: (f.item_ratings or {}).get(sku, f.item_rating) for sku in record.skus}
    async with conn.transaction():
        await conn.execute(
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
        await conn.executemany(
            "INSERT INTO item_ratings (order_id, sku, rating) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [(record.order_id, sku, rating) for sku, rating in stars.items()],
        )
