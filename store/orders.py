"""Orders in PostgreSQL: each recorded once, by its first run, with its
customer, the consent given at its checkout and the rollups recommendations
read (store/recommendations.py); then cancelled, delivered and reviewed."""

from __future__ import annotations

import asyncpg

from store.consent import record_checkout_consent
from workflows.models import CancelRecord, DeliveryRecord, FeedbackRecord, OrderInput, PickupMissedRecord, customer_workflow_id

# Held until the recording transaction ends.
LOCK_ORDER = "SELECT pg_advisory_xact_lock(hashtext('order:' || $1))"

# Who recorded the order, and whether a run of it got as far as a message.
RECORDED_BY = """
SELECT first_run_id, EXISTS (SELECT 1 FROM message_ledger l WHERE l.order_id = o.order_id) AS messaged
FROM orders o WHERE order_id = $1
"""

# The customer, then the order once ($15: it was not recorded yet), in one
# round trip. `placed`: this statement recorded it. Only then go its items,
# the rollups recommendations read and the coupon it used. Foreign keys are
# checked when the whole statement is done, so the order's customer may be
# written beside it; the statement writes them in the order their CTEs
# depend on one another, not as listed.
RECORD = """
WITH customer AS (
    INSERT INTO customers (customer_id, name, email, phone, timezone)
    VALUES ($2, $11, $12, $13, $14)
    ON CONFLICT (customer_id) DO UPDATE
    SET name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone,
        timezone = EXCLUDED.timezone, updated_at = now(), erased_at = NULL
    -- A customer erased (store/erasure.py) who places a new order is recorded
    -- anew; a retried recording of an order from before the erasure is not.
    WHERE customers.erased_at IS NULL OR $15
    RETURNING 1
),
-- An erased customer who returns: their customer workflow, whose data key
-- was shredded (codec/data_keys.py), may start anew under a new one.
revived AS (
    DELETE FROM data_keys WHERE $15 AND workflow_hash = workflow_id_hash($16) AND wrapped_key IS NULL
),
placed AS (
    INSERT INTO orders (order_id, customer_id, seller_id, seller_name, placed_at, currency, total, delivery_method,
                        document, first_run_id)
    -- Always true: it makes the customer's row be written (and locked) first,
    -- before any row of the rollups, as every recording and cancelling takes them.
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE (SELECT count(*) FROM customer) >= 0
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id
),
item AS (
    SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::int[], $21::numeric[])
        WITH ORDINALITY AS i(sku, name, category, quantity, unit_price, line_no)
    WHERE EXISTS (SELECT 1 FROM placed)
),
items AS (
    INSERT INTO order_items (order_id, line_no, sku, name, category, quantity, unit_price)
    SELECT $1, line_no, sku, name, category, quantity, unit_price FROM item
),
-- Rollups read by recommendations. Rows are touched in sku order so that
-- concurrent orders sharing products never deadlock.
sales AS (
    INSERT INTO product_sales AS p (sku, name, category, units_sold)
    SELECT sku, min(name), min(category), sum(quantity) FROM item
    GROUP BY sku ORDER BY sku
    ON CONFLICT (sku) DO UPDATE
    SET units_sold = p.units_sold + EXCLUDED.units_sold, name = EXCLUDED.name, category = EXCLUDED.category
),
pairs AS (
    INSERT INTO bought_together AS t (sku, other_sku, orders)
    SELECT a.sku, b.sku, 1 FROM (SELECT DISTINCT sku FROM item) a, (SELECT DISTINCT sku FROM item) b
    WHERE a.sku <> b.sku ORDER BY a.sku, b.sku
    ON CONFLICT (sku, other_sku) DO UPDATE SET orders = t.orders + 1
),
-- A coupon from a reward or a win-back, used by this order.
redeemed AS (
    UPDATE coupons SET redeemed_order_id = $1, redeemed_at = $5
    WHERE code = $22 AND customer_id = $2 AND redeemed_order_id IS NULL AND expires_at > $5
      AND EXISTS (SELECT 1 FROM placed)
)
SELECT EXISTS (SELECT 1 FROM placed) AS placed
"""

# The feedback and its items' stars, in one round trip.
STORE_FEEDBACK = """
WITH given AS (
    INSERT INTO feedback (order_id, customer_id, seller_id, skus, item_rating, seller_rating, comment)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (order_id) DO NOTHING
)
INSERT INTO item_ratings (order_id, sku, rating)
SELECT $1, sku, rating FROM unnest($8::text[], $9::smallint[]) AS r(sku, rating)
ON CONFLICT DO NOTHING
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
    c, items = order.customer, order.items
    placed = await conn.fetchval(
        RECORD,
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
        c.name,
        c.email,
        c.phone,
        c.timezone,
        recorded is None,
        customer_workflow_id(c.customer_id),
        [i.sku for i in items],
        [i.name for i in items],
        [i.category for i in items],
        [i.quantity for i in items],
        [i.unit_price for i in items],
        order.coupon_code,
    )
    if placed and c.marketing_consent:
        await record_checkout_consent(conn, c.customer_id, c.marketing_consent, order.order_id, order.placed_at)
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


async def store_feedback(conn: asyncpg.Connection | asyncpg.Pool, record: FeedbackRecord) -> None:
    """The feedback and each item's stars, once per order: the order's
    workflow stores what it took, the feedback page what it was given."""
    f = record.feedback
    stars = {sku: (f.item_ratings or {}).get(sku, f.item_rating) for sku in record.skus}
    await conn.execute(
        STORE_FEEDBACK,
        record.order_id,
        record.customer_id,
        record.seller_id,
        record.skus,
        f.item_rating,
        f.seller_rating,
        f.comment,
        list(stars),
        list(stars.values()),
    )
